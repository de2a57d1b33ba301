import CKVM
import Glibc
import X86

/// An open handle on the host's KVM device (normally /dev/kvm).
public final class Hypervisor: Sendable {
    /// The KVM API version this code speaks.
    public static let apiVersion: Int32 = 12

    /// Capabilities Tern relies on, checked when the device is opened.
    public static let requiredCapabilities: [(name: String, number: Int32)] = [
        ("KVM_CAP_USER_MEMORY", KVM_CAP_USER_MEMORY),
        ("KVM_CAP_IRQCHIP", KVM_CAP_IRQCHIP),
        ("KVM_CAP_PIT2", KVM_CAP_PIT2),
        ("KVM_CAP_SET_TSS_ADDR", KVM_CAP_SET_TSS_ADDR),
        ("KVM_CAP_SET_IDENTITY_MAP_ADDR", KVM_CAP_SET_IDENTITY_MAP_ADDR),
        ("KVM_CAP_EXT_CPUID", KVM_CAP_EXT_CPUID),
        ("KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT),
        ("KVM_CAP_MP_STATE", KVM_CAP_MP_STATE),
        ("KVM_CAP_IRQ_ROUTING", KVM_CAP_IRQ_ROUTING),
    ]

    /// The device path this handle was opened from.
    public let path: String
    let descriptor: Descriptor
    /// Size of each vCPU's shared kvm_run area.
    public let vcpuMapSize: Int
    /// How many memory slots a VM may have.
    public let memorySlotLimit: Int

    /// How the host's KVM runs guests: with hardware virtualisation, or in software (the PVM module, as on nested
    /// hosts without VMX/SVM), where guest ring 0 is instruction-emulated and some instructions are not emulated at all.
    public enum Backend: String, Sendable {
        case hardware
        case software
    }

    /// The backend, read from the host's loaded KVM vendor module.
    public var backend: Backend {
        access("/sys/module/kvm_pvm", F_OK) == 0 && access("/sys/module/kvm_intel", F_OK) != 0
            && access("/sys/module/kvm_amd", F_OK) != 0 ? .software : .hardware
    }

    /// Opens the KVM device, checks the API version and every required capability.
    public init(path: String = "/dev/kvm") throws(KVMError) {
        self.path = path
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 {
            let error = errno
            switch error {
            case ENOENT, ENODEV, ENXIO: throw .deviceMissing(path: path)
            case EACCES, EPERM: throw .permissionDenied(path: path)
            default: throw .openFailed(path: path, errno: error)
            }
        }
        descriptor = Descriptor(owning: fd)
        let version = ioctl(fd, ckvm_KVM_GET_API_VERSION(), 0)
        guard version == Self.apiVersion else {
            if version < 0 { throw .notKVM(path: path) }
            throw .unsupportedAPIVersion(version)
        }
        for capability in Self.requiredCapabilities where ioctl(fd, ckvm_KVM_CHECK_EXTENSION(), capability.number) <= 0 {
            throw .missingCapability(capability.name)
        }
        vcpuMapSize = Int(try ioctlValue(fd, ckvm_KVM_GET_VCPU_MMAP_SIZE(), 0, "KVM_GET_VCPU_MMAP_SIZE"))
        let slots = ioctl(fd, ckvm_KVM_CHECK_EXTENSION(), KVM_CAP_NR_MEMSLOTS)
        memorySlotLimit = slots > 0 ? Int(slots) : 32
    }

    /// Whether the host's KVM reports `capability` (a KVM_CAP_* number); returns its value, 0 when absent.
    public func capability(_ capability: Int32) -> Int32 {
        max(0, ioctl(descriptor.raw, ckvm_KVM_CHECK_EXTENSION(), capability))
    }

    /// The CPUID leaves the host's KVM can present to a guest.
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        var capacity: UInt32 = 128
        while true {
            guard let buffer = ckvm_cpuid2_alloc(capacity) else { throw .ioctlFailed("KVM_GET_SUPPORTED_CPUID", errno: ENOMEM) }
            defer { free(buffer) }
            let result = ioctl(descriptor.raw, ckvm_KVM_GET_SUPPORTED_CPUID(), UnsafeMutableRawPointer(buffer))
            if result < 0 {
                if errno == E2BIG && capacity < 4096 {
                    capacity *= 2
                    continue
                }
                throw .ioctlFailed("KVM_GET_SUPPORTED_CPUID", errno: errno)
            }
            let entries = ckvm_cpuid2_entries(buffer)!
            return (0..<Int(buffer.pointee.nent)).map { index in
                let entry = entries[index]
                return CPUIDEntry(function: entry.function, index: entry.index, flags: entry.flags,
                                  eax: entry.eax, ebx: entry.ebx, ecx: entry.ecx, edx: entry.edx)
            }
        }
    }

    /// The MSRs a vCPU's saved state carries: those KVM lists for saving (KVM_GET_MSR_INDEX_LIST) within the
    /// architectural, AMD64 and KVM paravirtual ranges, less IA32_MCG_CTL (as Firecracker keeps them), plus the
    /// MTRRs, which firmware sets but KVM does not list.
    public func saveableMSRs() throws(KVMError) -> [UInt32] {
        var capacity: UInt32 = 256
        while true {
            var indices = [UInt32](repeating: 0, count: Int(capacity))
            let count = indices.withUnsafeMutableBufferPointer { ckvm_msr_index_list(descriptor.raw, $0.baseAddress, capacity) }
            if count < 0 {
                if errno == E2BIG && capacity < 16384 {
                    capacity *= 4
                    continue
                }
                throw .ioctlFailed("KVM_GET_MSR_INDEX_LIST", errno: errno)
            }
            let listed = indices.prefix(Int(count)).filter { index in
                Self.saveableMSRRanges.contains { $0.contains(index) } && index != Self.machineCheckControlMSR
            }
            let missing = Self.memoryTypeRangeMSRs.filter { !listed.contains($0) }
            return listed + missing
        }
    }

    /// MSR ranges whose members a saved vCPU state may carry.
    static let saveableMSRRanges: [ClosedRange<UInt32>] = [
        0x0000_0000...0x0000_1FFF, 0xC000_0000...0xC000_03FF, 0xC001_0000...0xC001_FFFF, 0x4B56_4D00...0x4B56_4DFF,
    ]
    /// IA32_MCG_CTL, which KVM lists but refuses to restore on some hosts.
    static let machineCheckControlMSR: UInt32 = 0x17B
    /// MTRRdefType, the variable-range pairs and the fixed ranges.
    static let memoryTypeRangeMSRs: [UInt32] = [0x2FF] + Array(0x200...0x20F) + [0x250, 0x258, 0x259] + Array(0x268...0x26F)

    /// Creates an empty VM.
    public func createVM() throws(KVMError) -> VirtualMachine {
        let fd = try ioctlValue(descriptor.raw, ckvm_KVM_CREATE_VM(), 0, "KVM_CREATE_VM")
        return VirtualMachine(descriptor: Descriptor(owning: fd), vcpuMapSize: vcpuMapSize)
    }
}

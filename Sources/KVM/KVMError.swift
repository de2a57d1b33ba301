import Glibc

/// Why a KVM operation failed. Each case renders as one line that names the problem and, where there is one, the fix.
public enum KVMError: Error, Equatable, CustomStringConvertible {
    /// The KVM device node does not exist.
    case deviceMissing(path: String)
    /// The KVM device node exists but this user may not open it.
    case permissionDenied(path: String)
    /// Opening the device failed for another reason.
    case openFailed(path: String, errno: Int32)
    /// The path opened but is not a KVM device.
    case notKVM(path: String)
    /// The kernel speaks a KVM API version other than 12.
    case unsupportedAPIVersion(Int32)
    /// A capability this VMM relies on is absent.
    case missingCapability(String)
    /// An ioctl failed.
    case ioctlFailed(String, errno: Int32)
    /// mmap of a vCPU's shared run area failed.
    case mapFailed(errno: Int32)
    /// A saved state does not fit this host or this VM: a structure of the wrong size, a TSC frequency KVM
    /// cannot scale to, an MSR KVM refuses.
    case stateMismatch(String)

    public var description: String {
        switch self {
        case .deviceMissing(let path):
            return "\(path) does not exist: load the kvm module (modprobe kvm_intel or kvm_amd) and check that virtualisation is enabled in the BIOS or hypervisor"
        case .permissionDenied(let path):
            return "\(path): permission denied: add this user to the 'kvm' group or run as root"
        case .openFailed(let path, let errno):
            return "cannot open \(path): \(String(cString: strerror(errno)))"
        case .notKVM(let path):
            return "\(path) is not a KVM device; pass the KVM device node (normally /dev/kvm)"
        case .unsupportedAPIVersion(let version):
            return "KVM API version \(version) is not supported (need 12): upgrade the host kernel"
        case .missingCapability(let name):
            return "the host's KVM lacks \(name): upgrade the host kernel"
        case .ioctlFailed(let name, let errno):
            return "\(name) failed: \(String(cString: strerror(errno)))"
        case .mapFailed(let errno):
            return "cannot map the vCPU run area: \(String(cString: strerror(errno)))"
        case .stateMismatch(let reason):
            return "the saved VM state does not fit this host: \(reason)"
        }
    }
}

import CKVM
import Glibc

/// A KVM virtual machine: its memory slots, interrupt controllers and vCPUs.
public final class VirtualMachine: Sendable {
    let descriptor: Descriptor
    let vcpuMapSize: Int

    init(descriptor: consuming Descriptor, vcpuMapSize: Int) {
        self.descriptor = descriptor
        self.vcpuMapSize = vcpuMapSize
    }

    /// Places the three pages KVM needs for the real-mode TSS (Intel) at `address`.
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        _ = try ioctlValue(descriptor.raw, ckvm_KVM_SET_TSS_ADDR(), Int32(truncatingIfNeeded: Int64(bitPattern: address)), "KVM_SET_TSS_ADDR")
    }

    /// Places the identity-map page KVM needs for unrestricted-guest-less Intel hosts at `address`.
    public func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        var value = address
        try ioctlStruct(descriptor.raw, ckvm_KVM_SET_IDENTITY_MAP_ADDR(), &value, "KVM_SET_IDENTITY_MAP_ADDR")
    }

    /// Creates the in-kernel PIC, IOAPIC and local APICs.
    public func createInterruptController() throws(KVMError) {
        _ = try ioctlValue(descriptor.raw, ckvm_KVM_CREATE_IRQCHIP(), 0, "KVM_CREATE_IRQCHIP")
    }

    /// Creates the in-kernel i8254 PIT, with its speaker port left to the VMM.
    public func createTimer() throws(KVMError) {
        var config = kvm_pit_config()
        config.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        try ioctlStruct(descriptor.raw, ckvm_KVM_CREATE_PIT2(), &config, "KVM_CREATE_PIT2")
    }

    /// Maps `size` bytes of host memory at `host` into the guest at `guestAddress`, as memory slot `slot`.
    public func mapMemory(slot: UInt32, guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer) throws(KVMError) {
        try setMemorySlot(slot, guestAddress: guestAddress, size: size, host: host, flags: [])
    }

    /// Drives interrupt line `gsi` to `level`.
    public func setInterruptLine(_ gsi: UInt32, level: Bool) throws(KVMError) {
        var line = kvm_irq_level()
        line.irq = gsi
        line.level = level ? 1 : 0
        try ioctlStruct(descriptor.raw, ckvm_KVM_IRQ_LINE(), &line, "KVM_IRQ_LINE")
    }

    /// Makes guest writes of `value` (`length` bytes) to MMIO address `address` signal eventfd `descriptor`
    /// inside KVM instead of exiting to the VMM.
    public func registerNotification(mmioAddress address: UInt64, length: UInt32, value: UInt64, descriptor: Int32) throws(KVMError) {
        var request = kvm_ioeventfd()
        request.datamatch = value
        request.addr = address
        request.len = length
        request.fd = descriptor
        request.flags = UInt32(1 << kvm_ioeventfd_flag_nr_datamatch)
        try ioctlStruct(self.descriptor.raw, ckvm_KVM_IOEVENTFD(), &request, "KVM_IOEVENTFD")
    }

    /// Stops signalling `descriptor` for writes of `value` (`length` bytes) to `address`, undoing
    /// `registerNotification` with the same arguments, as when the guest moves the BAR holding the address.
    public func unregisterNotification(mmioAddress address: UInt64, length: UInt32, value: UInt64, descriptor: Int32) throws(KVMError) {
        var request = kvm_ioeventfd()
        request.datamatch = value
        request.addr = address
        request.len = length
        request.fd = descriptor
        request.flags = UInt32(1 << kvm_ioeventfd_flag_nr_datamatch | 1 << kvm_ioeventfd_flag_nr_deassign)
        try ioctlStruct(self.descriptor.raw, ckvm_KVM_IOEVENTFD(), &request, "KVM_IOEVENTFD (deassign)")
    }

    /// Replaces the VM's whole GSI routing table with `routes` (KVM_SET_GSI_ROUTING). Include
    /// `GSIRoute.defaultIRQChipRoutes`, or the legacy lines (COM1 on GSI 4, virtio-mmio on 16–23) stop working.
    /// The kernel's table is built in temporary storage, on the stack where the thread's stack has room.
    public func setGSIRouting(_ routes: [GSIRoute]) throws(KVMError) {
        let count = UInt32(routes.count)
        let size = ckvm_irq_routing_size(count)
        let (result, error): (Int32, Int32) = withUnsafeTemporaryAllocation(byteCount: size, alignment: 8) { buffer in
            let routing = buffer.baseAddress!.bindMemory(to: kvm_irq_routing.self, capacity: 1)
            ckvm_irq_routing_init(routing, count)
            for (index, route) in routes.enumerated() {
                switch route {
                case .irqchip(let gsi, let chip, let pin):
                    ckvm_irq_routing_set_irqchip(routing, UInt32(index), gsi, chip.rawValue, pin)
                case .msi(let gsi, let address, let data):
                    ckvm_irq_routing_set_msi(routing, UInt32(index), gsi, address, data)
                }
            }
            while true {
                let result = ioctl(descriptor.raw, ckvm_KVM_SET_GSI_ROUTING(), buffer.baseAddress!)
                if result >= 0 || errno != EINTR { return (result, errno) }
            }
        }
        if result < 0 { throw .ioctlFailed("KVM_SET_GSI_ROUTING", errno: error) }
    }

    /// Makes a signal on eventfd `eventfd` inject GSI `gsi` inside KVM (KVM_IRQFD), routed as the GSI routing
    /// table says at the time.
    public func registerIrqfd(eventfd: Int32, gsi: UInt32) throws(KVMError) {
        var request = kvm_irqfd()
        request.fd = UInt32(bitPattern: eventfd)
        request.gsi = gsi
        try ioctlStruct(descriptor.raw, ckvm_KVM_IRQFD(), &request, "KVM_IRQFD")
    }

    /// Undoes `registerIrqfd(eventfd:gsi:)`.
    public func unregisterIrqfd(eventfd: Int32, gsi: UInt32) throws(KVMError) {
        var request = kvm_irqfd()
        request.fd = UInt32(bitPattern: eventfd)
        request.gsi = gsi
        request.flags = UInt32(KVM_IRQFD_FLAG_DEASSIGN)
        try ioctlStruct(descriptor.raw, ckvm_KVM_IRQFD(), &request, "KVM_IRQFD (deassign)")
    }

    /// Injects one MSI writing `data` to `address` (KVM_SIGNAL_MSI). Returns false when it reached no vCPU: the
    /// guest blocked it, or no local APIC matched its destination (KVM then returns -1, which reads as EPERM).
    public func signalMSI(address: UInt64, data: UInt32) throws(KVMError) -> Bool {
        var message = kvm_msi()
        message.address_lo = UInt32(truncatingIfNeeded: address)
        message.address_hi = UInt32(truncatingIfNeeded: address >> 32)
        message.data = data
        let result = withUnsafeMutablePointer(to: &message) { pointer in
            while true {
                let result = ioctl(descriptor.raw, ckvm_KVM_SIGNAL_MSI(), UnsafeMutableRawPointer(pointer))
                if result >= 0 || errno != EINTR { return result }
            }
        }
        if result < 0 && errno == EPERM { return false }
        if result < 0 { throw .ioctlFailed("KVM_SIGNAL_MSI", errno: errno) }
        return result > 0
    }

    /// Creates vCPU `id`. Call this on the thread that will run it: KVM expects vCPU ioctls from that thread.
    public func createVCPU(id: UInt32) throws(KVMError) -> VCPU {
        let fd = try ioctlValue(descriptor.raw, ckvm_KVM_CREATE_VCPU(), Int32(id), "KVM_CREATE_VCPU")
        return try VCPU(id: id, descriptor: Descriptor(owning: fd), mapSize: vcpuMapSize)
    }
}

/// An interrupt controller a GSI can be routed to (KVM_IRQCHIP_*).
public enum IRQChip: UInt32, Sendable {
    case picMaster = 0
    case picSlave = 1
    case ioapic = 2
}

/// One entry of a VM's GSI routing table (KVM_SET_GSI_ROUTING).
public enum GSIRoute: Sendable, Equatable {
    /// GSI `gsi` drives input `pin` of `chip`.
    case irqchip(gsi: UInt32, chip: IRQChip, pin: UInt32)
    /// GSI `gsi` sends a message writing `data` to `address`.
    case msi(gsi: UInt32, address: UInt64, data: UInt32)

    /// The table KVM installs with the in-kernel irqchip: GSIs 0–15 to the IOAPIC input of the same number and to
    /// the master (0–7) or slave (8–15) PIC input `gsi mod 8`, GSIs 16–23 to the IOAPIC only.
    public static let defaultIRQChipRoutes: [GSIRoute] =
        (0..<16).flatMap { gsi in
            [
                .irqchip(gsi: gsi, chip: .ioapic, pin: gsi),
                .irqchip(gsi: gsi, chip: gsi < 8 ? .picMaster : .picSlave, pin: gsi % 8),
            ]
        } + (16..<24).map { .irqchip(gsi: $0, chip: .ioapic, pin: $0) }
}

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
        var region = kvm_userspace_memory_region(
            slot: slot, flags: 0,
            guest_phys_addr: guestAddress, memory_size: size, userspace_addr: UInt64(UInt(bitPattern: host)))
        try ioctlStruct(descriptor.raw, ckvm_KVM_SET_USER_MEMORY_REGION(), &region, "KVM_SET_USER_MEMORY_REGION")
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

    /// Creates vCPU `id`. Call this on the thread that will run it: KVM expects vCPU ioctls from that thread.
    public func createVCPU(id: UInt32) throws(KVMError) -> VCPU {
        let fd = try ioctlValue(descriptor.raw, ckvm_KVM_CREATE_VCPU(), Int32(id), "KVM_CREATE_VCPU")
        return try VCPU(id: id, descriptor: Descriptor(owning: fd), mapSize: vcpuMapSize)
    }
}

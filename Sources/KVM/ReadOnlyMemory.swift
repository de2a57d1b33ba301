import CKVM

extension VirtualMachine {
    /// Maps `size` bytes of host memory at `host` into the guest at `guestAddress` as read-only memory slot `slot`
    /// (KVM_MEM_READONLY): guest reads come from `host`, guest writes exit to the VMM as MMIO writes.
    public func mapReadOnlyMemory(slot: UInt32, guestAddress: UInt64, size: UInt64, host: UnsafeRawPointer) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: UInt32(KVM_MEM_READONLY),
            guest_phys_addr: guestAddress, memory_size: size, userspace_addr: UInt64(UInt(bitPattern: host)))
        try ioctlStruct(descriptor.raw, ckvm_KVM_SET_USER_MEMORY_REGION(), &region, "KVM_SET_USER_MEMORY_REGION (read-only)")
    }
}

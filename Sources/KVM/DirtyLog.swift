import CKVM
import Glibc

/// Flags of a memory slot.
public struct MemorySlotFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// KVM records every page the guest writes in the slot's dirty bitmap.
    public static let logDirtyPages = MemorySlotFlags(rawValue: UInt32(KVM_MEM_LOG_DIRTY_PAGES))
    /// Guest writes to the slot exit to the VMM as MMIO writes instead of changing memory.
    public static let readOnly = MemorySlotFlags(rawValue: UInt32(KVM_MEM_READONLY))
}

extension VirtualMachine {
    /// Creates or changes memory slot `slot`: `size` bytes of host memory at `host`, seen by the guest at
    /// `guestAddress`. Changing only the flags of an existing slot (same address and size) keeps its mapping.
    public func setMemorySlot(
        _ slot: UInt32, guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer, flags: MemorySlotFlags
    ) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: flags.rawValue, guest_phys_addr: guestAddress, memory_size: size,
            userspace_addr: UInt64(UInt(bitPattern: host)))
        try ioctlStruct(descriptor.raw, ckvm_KVM_SET_USER_MEMORY_REGION(), &region, "KVM_SET_USER_MEMORY_REGION")
    }

    /// Switches the VM to manual dirty-log protection (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): reading the dirty log
    /// then leaves pages writable until `clearDirtyLog` re-protects them, just before the VMM copies them, so a
    /// page written between the read and the copy is not sent twice. Call before logging starts.
    public func enableManualDirtyLogProtection() throws(KVMError) {
        let supported = UInt64(max(0, ioctl(descriptor.raw, ckvm_KVM_CHECK_EXTENSION(), KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)))
        let wanted = UInt64(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
        guard supported & wanted != 0 else { throw .missingCapability("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2") }
        var capability = kvm_enable_cap()
        capability.cap = UInt32(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
        capability.args.0 = wanted
        try ioctlStruct(descriptor.raw, ckvm_KVM_ENABLE_CAP(), &capability, "KVM_ENABLE_CAP (manual dirty log protection)")
    }

    /// Copies slot `slot`'s dirty bitmap (one bit per 4 KiB page, bit 0 of byte 0 the first page) into `bitmap`,
    /// which holds at least one bit per page of the slot, rounded up to 64 bits. Without manual protection KVM
    /// also clears its bitmap and write-protects the pages again.
    public func fetchDirtyLog(slot: UInt32, into bitmap: UnsafeMutableRawBufferPointer) throws(KVMError) {
        var log = kvm_dirty_log()
        log.slot = slot
        log.dirty_bitmap = bitmap.baseAddress
        try ioctlStruct(descriptor.raw, ckvm_KVM_GET_DIRTY_LOG(), &log, "KVM_GET_DIRTY_LOG")
    }

    /// Re-protects the pages of slot `slot` whose bits are set in `bitmap`, from `firstPage` (a multiple of 64) for
    /// `pageCount` pages (a multiple of 64 unless the range ends the slot), so that their next write is logged.
    public func clearDirtyLog(
        slot: UInt32, firstPage: UInt64, pageCount: UInt32, bitmap: UnsafeMutableRawBufferPointer
    ) throws(KVMError) {
        var clear = kvm_clear_dirty_log()
        clear.slot = slot
        clear.first_page = firstPage
        clear.num_pages = pageCount
        clear.dirty_bitmap = bitmap.baseAddress
        try ioctlStruct(descriptor.raw, ckvm_KVM_CLEAR_DIRTY_LOG(), &clear, "KVM_CLEAR_DIRTY_LOG")
    }
}

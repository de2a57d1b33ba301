import GuestMemory
import KVM
import Synchronization

/// Guest RAM and the KVM memory slots that map it, slot `i` for region `i`, each with KVM's dirty logging
/// switchable on demand. Together with `GuestMemory.writtenPages` (what the VMM itself wrote) it says which pages
/// changed: what a diff snapshot or a migration round must copy.
final class MemoryManager: Sendable {
    let memory: GuestMemory
    private let vm: VirtualMachine
    /// Whether each slot logs dirty pages; changed on the VMM thread.
    private let logging: Mutex<[Bool]>

    /// Maps every region of `memory` into `vm`, without dirty logging.
    init(memory: GuestMemory, vm: VirtualMachine) throws(KVMError) {
        self.memory = memory
        self.vm = vm
        logging = Mutex([Bool](repeating: false, count: memory.regions.count))
        for slot in memory.regions.indices { try setSlot(slot, logging: false) }
    }

    /// The number of memory slots: one per RAM region.
    var slotCount: Int { memory.regions.count }

    /// Whether slot `slot` logs the pages the guest writes.
    func isLogging(slot: Int) -> Bool {
        logging.withLock { $0[slot] }
    }

    /// Turns KVM's dirty logging of slot `slot` on or off. Turning it on starts a clean log.
    func setDirtyLogging(_ on: Bool, slot: Int) throws(KVMError) {
        try setSlot(slot, logging: on)
        logging.withLock { $0[slot] = on }
    }

    /// The pages of slot `slot` the guest wrote since logging began or since the last call, one bit per 4 KiB page
    /// (bit `i % 64` of word `i / 64` is the slot's page `i`). KVM clears its log as it hands it over.
    func takeDirtyLog(slot: Int) throws(KVMError) -> [UInt64] {
        let pages = Int(memory.regions[slot].size / 4096)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: (pages + 63) / 64 * 8, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        try vm.fetchDirtyLog(slot: UInt32(slot), into: buffer)
        return Array(buffer.bindMemory(to: UInt64.self))
    }

    private func setSlot(_ slot: Int, logging on: Bool) throws(KVMError) {
        let region = memory.regions[slot]
        try vm.setMemorySlot(UInt32(slot), guestAddress: region.guestAddress, size: region.size, host: region.host,
                             flags: on ? .logDirtyPages : [])
    }
}

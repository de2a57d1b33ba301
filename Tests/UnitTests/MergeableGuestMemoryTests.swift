import GuestMemory
import Testing

@Suite struct MergeableGuestMemoryTests {
    /// The balloon's discards work on mergeable (anonymous private) memory: the pages read as zero and leave the
    /// host's resident set, and the range can be used again.
    @Test func discardReleasesMergeablePages() throws {
        let memory = try GuestMemory(size: 8 << 20, options: MemoryOptions(mergeable: true))
        let range: (address: UInt64, length: UInt64) = (1 << 20, 4 << 20)
        try memory.write([UInt8](repeating: 0xA5, count: Int(range.length)), at: range.address)
        let resident = memory.residentBytes()
        #expect(resident >= range.length)
        try memory.discard(guestAddress: range.address, length: range.length)
        #expect(memory.residentBytes() <= resident - range.length)
        #expect(try memory.bytes(at: range.address, count: Int(range.length)).allSatisfy { $0 == 0 })
        try memory.store(UInt32(7), at: range.address)
        #expect(try memory.load(UInt32.self, at: range.address) == 7)
    }
}

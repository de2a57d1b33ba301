import GuestMemory
import Testing

@Suite struct GuestMemoryTests {
    @Test func readsAndWritesInsideRAM() throws {
        let memory = try GuestMemory(size: 4 << 20)
        try memory.store(UInt32(0xDEAD_BEEF), at: 0x1000)
        #expect(try memory.load(UInt32.self, at: 0x1000) == 0xDEAD_BEEF)
        #expect(try memory.bytes(at: 0x1000, count: 4) == [0xEF, 0xBE, 0xAD, 0xDE])
        try memory.write([1, 2, 3], at: (4 << 20) - 3)
        #expect(try memory.bytes(at: (4 << 20) - 3, count: 3) == [1, 2, 3])
    }

    @Test func rejectsAccessOutsideRAM() throws {
        let memory = try GuestMemory(size: 4 << 20)
        #expect(throws: GuestMemoryError.outOfRange(address: 4 << 20, length: 1)) { try memory.bytes(at: 4 << 20, count: 1) }
        #expect(throws: GuestMemoryError.outOfRange(address: (4 << 20) - 2, length: 4)) {
            try memory.store(UInt32(1), at: (4 << 20) - 2)
        }
        #expect(throws: GuestMemoryError.self) { try memory.load(UInt64.self, at: UInt64.max - 3) }
        #expect(!memory.contains(UInt64.max, length: UInt64.max))
        #expect(memory.contains(0, length: 4 << 20))
    }

    @Test func splitsAroundTheMMIOHole() {
        let ranges = MemoryLayout32.ranges(forSize: 4 << 30)
        #expect(ranges.count == 2)
        #expect(ranges[0].guestAddress == 0 && ranges[0].size == 0xC000_0000)
        #expect(ranges[1].guestAddress == 0x1_0000_0000 && ranges[1].size == 0x4000_0000)
        #expect(MemoryLayout32.ranges(forSize: 256 << 20).count == 1)
    }

    @Test func largeGuestHasTwoRegionsAndAccessesDoNotSpanTheHole() throws {
        let memory = try GuestMemory(size: (3 << 30) + (64 << 20))
        #expect(memory.regions.count == 2)
        try memory.store(UInt8(7), at: 0x1_0000_0000)
        #expect(try memory.load(UInt8.self, at: 0x1_0000_0000) == 7)
        #expect(throws: GuestMemoryError.self) { try memory.store(UInt8(1), at: 0xC000_0000) }
        #expect(throws: GuestMemoryError.self) { try memory.bytes(at: 0xBFFF_FFFF, count: 2) }
    }

    @Test func refusesBadSizes() {
        #expect(throws: GuestMemoryError.self) { try GuestMemory(size: 4096) }
        #expect(throws: GuestMemoryError.self) { try GuestMemory(size: (4 << 20) + 1) }
    }

    @Test func mergeableAndHugePageOptionsStillGiveUsableMemory() throws {
        let memory = try GuestMemory(size: 4 << 20, options: MemoryOptions(mergeable: true, hugePages: true))
        try memory.store(UInt64(42), at: 8)
        #expect(try memory.load(UInt64.self, at: 8) == 42)
    }
}

import BootLoader
import GuestMemory
import Testing

@Suite struct BootLayoutTests {
    @Test func memoryMapReservesTheBIOSAreaAndCoversRAM() throws {
        let memory = try GuestMemory(size: 64 << 20)
        let map = MemoryMapEntry.map(for: memory)
        #expect(map == [
            MemoryMapEntry(address: 0, size: 0x9_FC00, kind: .ram),
            MemoryMapEntry(address: 0x9_FC00, size: 0x10_0000 - 0x9_FC00, kind: .reserved),
            MemoryMapEntry(address: 0x10_0000, size: (64 << 20) - 0x10_0000, kind: .ram),
        ])
    }

    @Test func memoryMapSkipsTheMMIOHole() throws {
        let memory = try GuestMemory(size: (3 << 30) + (2 << 20))
        let map = MemoryMapEntry.map(for: memory)
        #expect(map.last == MemoryMapEntry(address: 0x1_0000_0000, size: 2 << 20, kind: .ram))
        #expect(map[2].address + map[2].size == 0xC000_0000)
    }
}

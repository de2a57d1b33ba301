import Glibc
import GuestMemory
import Testing

/// The pages the VMM writes into guest RAM, recorded only while tracking is on.
@Suite struct WrittenPagesTests {
    @Test func nothingIsRecordedWhileTrackingIsOff() throws {
        let memory = try GuestMemory(size: 4 << 20)
        try memory.write([1, 2, 3], at: 0x5000)
        #expect(!memory.writtenPages.isTracking)
        #expect(memory.writtenPages.pages().isEmpty)
    }

    @Test func writesWhileTrackingMarkEveryPageTheyTouch() throws {
        let memory = try GuestMemory(size: 4 << 20)
        memory.writtenPages.setTracking(true)
        try memory.write([UInt8](repeating: 7, count: 2), at: 0x1FFF)
        try memory.store(UInt32(9), at: 0x30_0000)
        try memory.zero(at: 0x10_0000, length: 64 * 4096 + 1)
        var expected = [1, 2, 0x300]
        expected += (0x100...0x140)
        #expect(memory.writtenPages.pages() == expected.sorted())
        memory.writtenPages.setTracking(false)
        try memory.write([1], at: 0x20_0000)
        #expect(!memory.writtenPages.pages().contains(0x200))
    }

    @Test func takingTheBitmapClearsIt() throws {
        let memory = try GuestMemory(size: 4 << 20)
        memory.writtenPages.setTracking(true)
        try memory.write([1], at: 65 * 4096)
        let bitmap = memory.writtenPages.takeBitmap()
        #expect(bitmap.count == (4 << 20) / 4096 / 64)
        #expect(bitmap[1] == 1 << 1 && bitmap.enumerated().allSatisfy { $0.offset == 1 || $0.element == 0 })
        #expect(memory.writtenPages.pages().isEmpty)
    }
}

/// Guest RAM built from an existing file, as a restore builds it.
@Suite struct AdoptedGuestMemoryTests {
    static func file(size: Int, filledWith byte: UInt8) throws -> Int32 {
        var template = Array("/tmp/tern-ram-XXXXXX".utf8CString)
        let descriptor = mkstemp(&template)
        try #require(descriptor >= 0)
        unlink(template)
        let bytes = [UInt8](repeating: byte, count: size)
        try #require(pwrite(descriptor, bytes, bytes.count, 0) == size)
        return descriptor
    }

    @Test func aPrivateCopyStartsFromTheFileAndNeverChangesIt() throws {
        let descriptor = try Self.file(size: 4 << 20, filledWith: 0xAB)
        let copy = dup(descriptor)
        defer { close(copy) }
        let memory = try GuestMemory(adopting: descriptor, size: 4 << 20, sharing: .privateCopy)
        #expect(try memory.load(UInt8.self, at: 0x12345) == 0xAB)
        try memory.store(UInt8(0x11), at: 0x12345)
        #expect(try memory.load(UInt8.self, at: 0x12345) == 0x11)
        var byte: UInt8 = 0
        #expect(pread(copy, &byte, 1, 0x12345) == 1 && byte == 0xAB)
    }

    @Test func aSharedMappingWritesThroughToTheFile() throws {
        let descriptor = try Self.file(size: 4 << 20, filledWith: 0)
        let copy = dup(descriptor)
        defer { close(copy) }
        let memory = try GuestMemory(adopting: descriptor, size: 4 << 20, sharing: .shared)
        try memory.store(UInt8(0x5A), at: 0x2000)
        var byte: UInt8 = 0
        #expect(pread(copy, &byte, 1, 0x2000) == 1 && byte == 0x5A)
    }

    @Test func aFileShorterThanTheRAMIsRefusedAndClosed() throws {
        let descriptor = try Self.file(size: 2 << 20, filledWith: 0)
        #expect(throws: GuestMemoryError.invalidSize(4 << 20, reason: "the backing file holds only \(2 << 20) bytes")) {
            try GuestMemory(adopting: descriptor, size: 4 << 20, sharing: .privateCopy)
        }
        #expect(fcntl(descriptor, F_GETFD) == -1, "the memory closes a descriptor it adopted, also when it fails")
    }
}

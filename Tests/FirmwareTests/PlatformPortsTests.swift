import Devices
import Firmware
import Glibc
import Synchronization
import TestSupport
import Testing

/// Collects console bytes.
final class CollectedBytes: ConsoleOutput {
    private let storage = Mutex<[UInt8]>([])
    var bytes: [UInt8] { storage.withLock { $0 } }
    func write(_ bytes: UnsafeRawBufferPointer) { storage.withLock { $0.append(contentsOf: bytes) } }
}

@Suite struct PlatformPortsTests {
    static func readByte(_ device: any BusDevice, offset: UInt64 = 0) -> UInt8 {
        var value: UInt8 = 0
        withUnsafeMutableBytes(of: &value) { device.read(offset: offset, into: $0) }
        return value
    }

    static func writeByte(_ device: any BusDevice, _ value: UInt8, offset: UInt64 = 0) {
        withUnsafeBytes(of: value) { device.write(offset: offset, from: $0) }
    }

    @Test func portAKeepsTheA20BitAndResetsOnBitZero() {
        let resets = Mutex(0)
        let port = SystemControlPortA { resets.withLock { $0 += 1 } }
        #expect(Self.readByte(port) == 0x02, "A20 starts open")
        Self.writeByte(port, 0x00)
        #expect(Self.readByte(port) == 0x00)
        #expect(resets.withLock { $0 } == 0)
        Self.writeByte(port, 0x03)
        #expect(Self.readByte(port) == 0x02)
        #expect(resets.withLock { $0 } == 1)
    }

    @Test func debugConsoleAnnouncesItselfAndForwardsBytes() {
        let sink = CollectedBytes()
        let console = DebugConsole(sink: sink)
        #expect(Self.readByte(console) == 0xE9)
        Array("SeaBIOS\n".utf8).withUnsafeBytes { console.write(offset: 0, from: $0) }
        #expect(sink.bytes == Array("SeaBIOS\n".utf8))
    }

    @Test func romWritesAreDroppedWithRateLimitedLines() {
        let lines = LogLines()
        let writes = ReadOnlyMemoryWrites(base: 0xFFFC_0000, log: lines.sink)
        for _ in 0..<(ReadOnlyMemoryWrites.logInterval + 1) { Self.writeByte(writes, 0xAA, offset: 0x10) }
        #expect(writes.dropped == ReadOnlyMemoryWrites.logInterval + 1)
        #expect(lines.lines.count == 2)
        #expect(lines.lines.first?.contains("0xfffc0010") == true)
    }
}

@Suite struct FirmwareImageTests {
    static func file(size: Int) -> String {
        temporaryFile((0..<size).map { UInt8(truncatingIfNeeded: $0 / 4096) }, name: "firmware")
    }

    @Test(arguments: [128 << 10, 256 << 10])
    func imagesSitBelow4GiBAndEndAt1MiB(size: Int) throws {
        let path = Self.file(size: size)
        defer { unlink(path) }
        let image = try FirmwareImage(path: path)
        #expect(image.highAddress == (1 << 32) - UInt64(size))
        let shadow = image.shadow
        #expect(shadow.address + UInt64(shadow.bytes.count) == 0x10_0000)
        #expect(shadow.bytes.count == size)
        #expect(shadow.bytes.last == UInt8(truncatingIfNeeded: (size - 1) / 4096))
    }

    @Test(arguments: [0, 4096, 65 << 10, 512 << 10])
    func badSizesAreRefused(size: Int) throws {
        let path = Self.file(size: size)
        defer { unlink(path) }
        #expect(throws: FirmwareImage.ImageError.badSize(path: path, size: size)) { try FirmwareImage(path: path) }
    }

    @Test func missingFilesNameThePath() {
        #expect(throws: FirmwareImage.ImageError.unreadable(path: "/nonexistent/bios.bin", errno: ENOENT)) {
            try FirmwareImage(path: "/nonexistent/bios.bin")
        }
    }
}

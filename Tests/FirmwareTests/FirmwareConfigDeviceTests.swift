import Firmware
import GuestMemory
import TestSupport
import Testing

@Suite struct FirmwareConfigDeviceTests {
    typealias Control = FirmwareConfigDevice.Control

    static func items() throws -> FirmwareConfigItems {
        var items = FirmwareConfigItems()
        try items.addFile("etc/numbers", (0..<100).map { UInt8($0) })
        return items
    }

    static func driver(log: LogLines = LogLines()) throws -> FirmwareConfigDriver {
        let memory = try GuestMemory(size: GuestMemory.minimumSize)
        return FirmwareConfigDriver(device: FirmwareConfigDevice(items: try items(), memory: memory, log: log.sink), memory: memory)
    }

    @Test func portReadsWalkTheSelectedItemThenReadZero() throws {
        let driver = try Self.driver()
        driver.select(FirmwareConfigItems.Key.signature)
        #expect(driver.readData(6) == Array("QEMU".utf8) + [0, 0])
        driver.select(0x20)
        #expect(driver.readData(3) == [0, 1, 2])
        #expect(driver.readData(2) == [3, 4])
        driver.select(0x20)
        #expect(driver.readData(1) == [0])
        driver.select(0x7777)
        #expect(driver.readData(2) == [0, 0])
    }

    @Test func wideDataReadsReturnConsecutiveBytes() throws {
        let driver = try Self.driver()
        driver.select(0x20)
        var word: UInt32 = 0
        withUnsafeMutableBytes(of: &word) { driver.device.read(offset: 1, into: $0) }
        #expect(word == 0x0302_0100)
    }

    @Test func dmaRegistersReadTheSignature() throws {
        let driver = try Self.driver()
        var bytes = [UInt8](repeating: 0, count: 8)
        for index in 0..<8 {
            bytes.withUnsafeMutableBytes { driver.device.read(offset: 4 + UInt64(index), into: UnsafeMutableRawBufferPointer(rebasing: $0[index..<index + 1])) }
        }
        #expect(bytes == Array("QEMU CFG".utf8))
    }

    @Test func selectReadSkipAndReadAgain() throws {
        let driver = try Self.driver()
        try driver.dma(control: 0x20 << 16 | Control.select | Control.read, length: 4, buffer: 0x2000)
        #expect(try driver.control() == 0)
        #expect(try driver.memory.bytes(at: 0x2000, count: 4) == [0, 1, 2, 3])
        try driver.dma(control: Control.skip, length: 10, buffer: 0)
        #expect(try driver.control() == 0)
        try driver.dma(control: Control.read, length: 2, buffer: 0x2000)
        #expect(try driver.memory.bytes(at: 0x2000, count: 2) == [14, 15])
        #expect(driver.readData(1) == [16], "DMA and port reads share the position")
    }

    @Test func dmaPastTheEndZeroFills() throws {
        let driver = try Self.driver()
        try driver.memory.write([UInt8](repeating: 0xEE, count: 64), at: 0x3000)
        try driver.dma(control: 0x20 << 16 | Control.select | Control.skip, length: 98, buffer: 0)
        try driver.dma(control: Control.read, length: 8, buffer: 0x3000)
        #expect(try driver.control() == 0)
        #expect(try driver.memory.bytes(at: 0x3000, count: 9) == [98, 99, 0, 0, 0, 0, 0, 0, 0xEE])
    }

    @Test func selectWithoutTransferOnlyRewinds() throws {
        let driver = try Self.driver()
        try driver.dma(control: UInt32(FirmwareConfigItems.Key.signature) << 16 | Control.select, length: 100, buffer: 0x4000)
        #expect(try driver.control() == 0)
        #expect(driver.readData(4) == Array("QEMU".utf8))
    }

    @Test func directoryThroughDMA() throws {
        let driver = try Self.driver()
        try driver.dma(control: UInt32(FirmwareConfigItems.Key.fileDirectory) << 16 | Control.select | Control.read,
                       length: 68, buffer: 0x5000)
        let directory = try driver.memory.bytes(at: 0x5000, count: 68)
        #expect(directory.bigEndian(UInt32.self, at: 0) == 1)
        #expect(directory.bigEndian(UInt32.self, at: 4) == 100)
        #expect(directory.bigEndian(UInt16.self, at: 8) == 0x20)
    }
}

@Suite struct FirmwareConfigHostileDMATests {
    typealias Control = FirmwareConfigDevice.Control

    @Test func bufferOutsideRAMFailsThatRequestOnly() throws {
        let log = LogLines()
        let driver = try FirmwareConfigDeviceTests.driver(log: log)
        try driver.dma(control: 0x20 << 16 | Control.select | Control.read, length: 16, buffer: 0xFEE0_0000)
        #expect(try driver.control() == Control.error)
        try driver.dma(control: 0x20 << 16 | Control.select | Control.read, length: 16, buffer: 0xFFFF_FFFF_FFFF_FFF8)
        #expect(try driver.control() == Control.error)
        #expect(log.lines.count == 1, "one line for the first failure")
        try driver.dma(control: 0x20 << 16 | Control.select | Control.read, length: 2, buffer: 0x2000)
        #expect(try driver.control() == 0)
        #expect(try driver.memory.bytes(at: 0x2000, count: 2) == [0, 1])
    }

    @Test func lengthsPastTheEndOfRAMFail() throws {
        let driver = try FirmwareConfigDeviceTests.driver()
        let end = GuestMemory.minimumSize
        try driver.dma(control: 0x20 << 16 | Control.select | Control.read, length: 0x20, buffer: end - 0x10)
        #expect(try driver.control() == Control.error)
        try driver.dma(control: 0x20 << 16 | Control.select | Control.read, length: UInt32.max, buffer: 0x2000)
        #expect(try driver.control() == Control.error)
        try driver.dma(control: Control.skip, length: UInt32.max, buffer: 0)
        try driver.dma(control: Control.skip, length: UInt32.max, buffer: 0)
        #expect(try driver.control() == 0)
        #expect(driver.readData(1) == [0], "skipping past the end leaves nothing to read")
    }

    @Test func unknownControlBitsAndWritesFail() throws {
        let driver = try FirmwareConfigDeviceTests.driver()
        try driver.memory.write([0xEE, 0xEE], at: 0x2000)
        try driver.dma(control: 0x20 << 16 | Control.select | Control.read | 1 << 5, length: 2, buffer: 0x2000)
        #expect(try driver.control() == Control.error)
        #expect(try driver.memory.bytes(at: 0x2000, count: 2) == [0xEE, 0xEE], "nothing was transferred")
        try driver.dma(control: 0x20 << 16 | Control.select | Control.write, length: 2, buffer: 0x2000)
        #expect(try driver.control() == Control.error)
        driver.select(0x20)
        #expect(driver.readData(1) == [0], "a refused write changes no item")
    }

    @Test func descriptorsOutsideRAMAreDropped() throws {
        let log = LogLines()
        let driver = try FirmwareConfigDeviceTests.driver(log: log)
        driver.select(0x20)
        driver.start(descriptor: 0xFEE0_0000)
        driver.start(descriptor: GuestMemory.minimumSize - 8)
        driver.start(descriptor: 0xFFFF_FFFF_FFFF_FFF8)
        #expect(log.lines.count == 1)
        #expect(driver.readData(1) == [0], "the selection is untouched")
    }

    @Test func randomDescriptorsNeverEscapeRAM() throws {
        let driver = try FirmwareConfigDeviceTests.driver()
        var random = SplitMix64(state: 0x9E37_79B9_7F4A_7C15)
        func next() -> UInt64 { random.next() }
        for _ in 0..<2000 {
            let buffer = next() % 2 == 0 ? next() % (GuestMemory.minimumSize + 0x1000) : next()
            let length = next() % 4 == 0 ? UInt32(truncatingIfNeeded: next()) : UInt32(next() % 0x200)
            let control = UInt32(truncatingIfNeeded: next()) & 0x003F_001F
            try driver.dma(control: control, length: length, buffer: buffer, descriptor: 0x1000)
            let outcome = try driver.control()
            #expect(outcome == 0 || outcome == Control.error)
        }
    }
}

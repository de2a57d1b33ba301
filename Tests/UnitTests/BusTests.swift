import Devices
import Synchronization
import Testing

final class RecordingDevice: BusDevice {
    let writes = Mutex<[(UInt64, [UInt8])]>([])
    let fill: UInt8

    init(fill: UInt8 = 0xAB) {
        self.fill = fill
    }

    func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = fill &+ UInt8(truncatingIfNeeded: offset) }
    }

    func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        writes.withLock { $0.append((offset, Array(data))) }
    }
}

@Suite struct BusTests {
    @Test func dispatchesToTheRightDeviceWithRelativeOffsets() throws {
        var bus = Bus()
        let first = RecordingDevice(fill: 0x10)
        let second = RecordingDevice(fill: 0x20)
        try bus.register(second, base: 0x3F8, length: 8)
        try bus.register(first, base: 0x60, length: 5)
        var byte: UInt8 = 0
        withUnsafeMutableBytes(of: &byte) { #expect(bus.read(0x3FA, into: $0)) }
        #expect(byte == 0x22)
        withUnsafeBytes(of: UInt8(9)) { #expect(bus.write(0x64, from: $0)) }
        #expect(first.writes.withLock { $0.map(\.0) } == [4])
        #expect(bus.resolve(0x3FF)?.offset == 7)
        #expect(bus.resolve(0x400) == nil)
        #expect(bus.resolve(0x5F) == nil)
    }

    @Test func unclaimedReadsReturnAllOnes() {
        let bus = Bus()
        var word: UInt32 = 0
        withUnsafeMutableBytes(of: &word) { #expect(!bus.read(0xCFC, into: $0)) }
        #expect(word == 0xFFFF_FFFF)
    }

    @Test func rejectsOverlapsAndEmptyRanges() throws {
        var bus = Bus()
        try bus.register(RecordingDevice(), base: 0x100, length: 0x10)
        #expect(throws: BusError.overlap(base: 0x10F, length: 1, existingBase: 0x100, existingLength: 0x10)) {
            try bus.register(RecordingDevice(), base: 0x10F, length: 1)
        }
        #expect(throws: BusError.overlap(base: 0xF0, length: 0x11, existingBase: 0x100, existingLength: 0x10)) {
            try bus.register(RecordingDevice(), base: 0xF0, length: 0x11)
        }
        #expect(throws: BusError.emptyRange(base: 0x200)) { try bus.register(RecordingDevice(), base: 0x200, length: 0) }
        #expect(throws: BusError.rangeOverflow(base: UInt64.max, length: 2)) {
            try bus.register(RecordingDevice(), base: UInt64.max, length: 2)
        }
        try bus.register(RecordingDevice(), base: 0x110, length: 1)
        try bus.register(RecordingDevice(), base: 0xFF, length: 1)
        #expect(bus.count == 3)
    }

    @Test func manyRangesResolveByBinarySearch() throws {
        var bus = Bus()
        let devices = (0..<64).map { RecordingDevice(fill: UInt8($0)) }
        for (index, device) in devices.enumerated().reversed() {
            try bus.register(device, base: UInt64(index) * 0x1000, length: 0x800)
        }
        for index in 0..<64 {
            let resolved = bus.resolve(UInt64(index) * 0x1000 + 0x7FF)
            #expect(resolved?.device === devices[index])
            #expect(bus.resolve(UInt64(index) * 0x1000 + 0x800) == nil)
        }
    }
}

import Devices
import GuestMemory
import Synchronization
import TestSupport
import Testing
import Virtio
import VirtioDevices

/// Collects what the console writes, one entry per write.
final class RecordingOutput: ConsoleOutput {
    let writes = Mutex<[[UInt8]]>([])

    func write(_ bytes: UnsafeRawBufferPointer) { writes.withLock { $0.append(Array(bytes)) } }

    var bytes: [UInt8] { writes.withLock { $0.flatMap { $0 } } }
}

/// A console activated over two 16-entry split queues in 16 MiB of guest RAM, driven the way a driver would.
struct ConsoleHarness {
    static let queueSize: UInt16 = 16
    /// Descriptor table, available ring and used ring of each queue.
    static let rings: [(table: UInt64, available: UInt64, used: UInt64)] = [
        (0x10_0000, 0x11_0000, 0x12_0000), (0x14_0000, 0x15_0000, 0x16_0000),
    ]
    static let indirectTable: UInt64 = 0x18_0000

    let memory: GuestMemory
    let output = RecordingOutput()
    let interrupt = RecordingInterrupt()
    var device: Console
    private var driverRings: [DriverRing]

    init() throws {
        memory = try GuestMemory(size: 16 << 20)
        device = Console(memory: memory, output: output, queueSize: Self.queueSize)
        let features = device.features
        let memory = memory
        driverRings = Self.rings.map { rings in
            DriverRing(
                memory: memory, size: Self.queueSize, descriptorTable: rings.table,
                availableRing: rings.available, usedRing: rings.used, features: features)
        }
        try device.activate(features: features, queues: try driverRings.map { try $0.queue() }, interrupt: interrupt)
    }

    /// Makes `buffers` available on `queue` as one chain (direct, or through one indirect table).
    mutating func publish(_ queue: Int, _ buffers: [ChainBuffer], indirect: Bool = false) throws {
        try driverRings[queue].publish(buffers, indirectTable: indirect ? Self.indirectTable : nil)
    }

    /// used.idx of `queue`.
    func usedIndex(_ queue: Int) throws -> UInt16 { try driverRings[queue].usedIndex() }

    /// Used element `index` of `queue`: the head and the written length.
    func usedElement(_ queue: Int, _ index: UInt16) throws -> (head: UInt32, length: UInt32) {
        let element = try driverRings[queue].usedElement(Int(index))
        return (element.id, element.length)
    }
}

@Suite struct VirtioConsoleTests {
    @Test func offersFeaturesAndQueues() throws {
        let device = Console(memory: try GuestMemory(size: 2 << 20), output: RecordingOutput())
        #expect(device.deviceType == .console)
        #expect(device.queueCount == 2)
        #expect(device.maximumQueueSize(0) == 64 && device.maximumQueueSize(1) == 64 && device.maximumQueueSize(2) == 0)
        #expect(device.features == VirtioFeatures(bits: [32, 29, 28, 2, 0]))
    }

    @Test func configurationSpace() throws {
        let device = try ConsoleHarness().device
        #expect(device.configurationSize == 12)
        var bytes = [UInt8](repeating: 0xAA, count: 16)
        bytes.withUnsafeMutableBytes { device.readConfiguration(offset: 0, into: $0) }
        #expect(bytes == [80, 0, 25, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        var rows = [UInt8](repeating: 0xAA, count: 2)
        rows.withUnsafeMutableBytes { device.readConfiguration(offset: 2, into: $0) }
        #expect(rows == [25, 0])
    }

    @Test func emergencyWrite() throws {
        var harness = try ConsoleHarness()
        let value: [UInt8] = [UInt8(ascii: "!"), 0, 0, 0]
        value.withUnsafeBytes { harness.device.writeConfiguration(offset: 8, bytes: $0) }
        // Writes elsewhere are ignored.
        value.withUnsafeBytes { harness.device.writeConfiguration(offset: 0, bytes: $0) }
        value.withUnsafeBytes { harness.device.writeConfiguration(offset: 4, bytes: $0) }
        // Before activation too.
        let output = RecordingOutput()
        var idle = Console(memory: harness.memory, output: output)
        [UInt8(ascii: "?")].withUnsafeBytes { idle.writeConfiguration(offset: 8, bytes: $0) }
        #expect(harness.output.bytes == Array("!".utf8))
        #expect(output.bytes == Array("?".utf8))
        #expect(!harness.interrupt.needsReset)
    }

    @Test func transmitReachesOutput() throws {
        var harness = try ConsoleHarness()
        try harness.memory.write(Array("hello, ".utf8), at: 0x20_0000)
        try harness.memory.write(Array("world".utf8), at: 0x20_1000)
        try harness.memory.write(Array("\n".utf8), at: 0x20_2000)
        try harness.publish(1, [
            ChainBuffer(address: 0x20_0000, length: 7, isWrite: false),
            ChainBuffer(address: 0x20_1000, length: 5, isWrite: false),
        ])
        try harness.publish(1, [ChainBuffer(address: 0x20_2000, length: 1, isWrite: false)], indirect: true)
        harness.device.notify(queue: 1)
        #expect(harness.output.bytes == Array("hello, world\n".utf8))
        // Segment by segment, straight from guest memory.
        #expect(harness.output.writes.withLock { $0.count } == 3)
        #expect(try harness.usedIndex(1) == 2)
        #expect(try harness.usedElement(1, 0) == (0, 0))
        #expect(try harness.usedElement(1, 1) == (2, 0))
        #expect(harness.interrupt.usedBuffers == 1)
        // A receiveq notification does nothing.
        harness.device.notify(queue: 0)
        #expect(try harness.usedIndex(0) == 0)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func receiveFillsBuffers() throws {
        var harness = try ConsoleHarness()
        try harness.publish(0, [
            ChainBuffer(address: 0x30_0000, length: 3, isWrite: true),
            ChainBuffer(address: 0x30_1000, length: 2, isWrite: true),
        ])
        try harness.publish(0, [ChainBuffer(address: 0x30_2000, length: 4, isWrite: true)], indirect: true)
        try harness.publish(0, [ChainBuffer(address: 0x30_3000, length: 8, isWrite: true)])
        #expect(harness.device.receive(Array("abcdefgh".utf8)) == 8)
        #expect(try harness.memory.bytes(at: 0x30_0000, count: 3) == Array("abc".utf8))
        #expect(try harness.memory.bytes(at: 0x30_1000, count: 2) == Array("de".utf8))
        #expect(try harness.memory.bytes(at: 0x30_2000, count: 3) == Array("fgh".utf8))
        #expect(try harness.usedIndex(0) == 2)
        #expect(try harness.usedElement(0, 0) == (0, 5))
        #expect(try harness.usedElement(0, 1) == (2, 3))
        #expect(harness.interrupt.usedBuffers == 1)
        // The last buffer takes 8 of 10 bytes; the other 2 are refused.
        #expect(harness.device.receive(Array("0123456789".utf8)) == 8)
        #expect(try harness.memory.bytes(at: 0x30_3000, count: 8) == Array("01234567".utf8))
        #expect(try harness.usedElement(0, 2) == (3, 8))
        #expect(harness.device.receive("89".utf8) == 0)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func receiveWithoutBuffers() throws {
        var harness = try ConsoleHarness()
        #expect(harness.device.receive(Array("x".utf8)) == 0)
        #expect(try harness.usedIndex(0) == 0)
        #expect(harness.interrupt.usedBuffers == 0)
        // Nothing is offered while the device is not running.
        var idle = Console(memory: harness.memory, output: harness.output)
        #expect(idle.receive(Array("x".utf8)) == 0)
        // Empty input pops no buffer.
        try harness.publish(0, [ChainBuffer(address: 0x30_0000, length: 4, isWrite: true)])
        #expect(harness.device.receive([UInt8]()) == 0)
        #expect(try harness.usedIndex(0) == 0)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func writableBufferOnTransmitqNeedsReset() throws {
        var harness = try ConsoleHarness()
        try harness.publish(1, [
            ChainBuffer(address: 0x20_0000, length: 4, isWrite: false),
            ChainBuffer(address: 0x20_1000, length: 4, isWrite: true),
        ])
        harness.device.notify(queue: 1)
        #expect(harness.interrupt.needsReset)
        #expect(try harness.usedIndex(1) == 0)
        // The queues are dropped: input is refused too.
        try harness.publish(0, [ChainBuffer(address: 0x30_0000, length: 4, isWrite: true)])
        #expect(harness.device.receive(Array("x".utf8)) == 0)
    }

    @Test func readableBufferOnReceiveqNeedsReset() throws {
        var harness = try ConsoleHarness()
        try harness.publish(0, [ChainBuffer(address: 0x30_0000, length: 4, isWrite: false)])
        #expect(harness.device.receive(Array("abc".utf8)) == 0)
        #expect(harness.interrupt.resetReasons.count == 1)
        #expect(try harness.usedIndex(0) == 0)
        #expect(try harness.memory.bytes(at: 0x30_0000, count: 3) == [0, 0, 0])
    }

    @Test func resetDropsQueues() throws {
        var harness = try ConsoleHarness()
        try harness.publish(1, [ChainBuffer(address: 0x20_0000, length: 1, isWrite: false)])
        harness.device.reset()
        harness.device.notify(queue: 1)
        #expect(harness.output.bytes.isEmpty)
        #expect(try harness.usedIndex(1) == 0)
    }
}

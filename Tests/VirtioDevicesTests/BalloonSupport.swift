import GuestMemory
import Synchronization
import Virtio
import VirtioDevices

/// Records every signal a balloon sends.
final class BalloonInterrupt: InterruptSignal {
    let usedQueues = Mutex<[Int]>([])
    let configurationChanges = Mutex(0)
    let resetReasons = Mutex<[String]>([])

    func signalUsedBuffers(queue: Int) { usedQueues.withLock { $0.append(queue) } }
    func signalConfigurationChange() { configurationChanges.withLock { $0 += 1 } }
    func signalNeedsReset(reason: String) { resetReasons.withLock { $0.append(reason) } }
    func requestService(queue: Int) {}

    var resets: Int { resetReasons.withLock { $0.count } }
}

/// A balloon activated over consecutive 16-entry queues in 16 MiB of guest RAM, driven the way a driver would.
struct BalloonHarness {
    static let queueSize: UInt16 = 16
    /// Where page frame lists and statistics buffers go.
    static let listAddress: UInt64 = 0x20_0000
    /// Pages the tests fill and give back, from 8 MiB.
    static let pageBase: UInt64 = 0x80_0000

    let memory: GuestMemory
    let interrupt = BalloonInterrupt()
    let device: Balloon
    private var nextDescriptor = [UInt16](repeating: 0, count: 4)
    private var availableIndex = [UInt16](repeating: 0, count: 4)
    private var lastUsed = [UInt16](repeating: 0, count: 4)

    /// A balloon offering `options`, activated with `acknowledged` (default: everything offered) and `queues`
    /// enabled queues (default: as many as the acknowledged features call for).
    init(_ options: Balloon.Options, acknowledged: VirtioFeatures? = nil, queues: Int? = nil) throws {
        memory = try GuestMemory(size: 16 << 20)
        device = Balloon(memory: memory, options: options)
        let features = acknowledged ?? device.features
        let count = queues ?? 2 + (features.contains(Balloon.Feature.statisticsQueue) ? 1 : 0)
            + (features.contains(Balloon.Feature.freePageReporting) ? 1 : 0)
        let rings = try (0..<count).map { queue in
            let base = Self.rings(queue)
            return try SplitQueue(
                memory: memory, size: Self.queueSize, descriptorTable: base.table, availableRing: base.available,
                usedRing: base.used, features: features)
        }
        try device.activate(features: features, queues: rings + Array(repeating: nil, count: device.queueCount - count), interrupt: interrupt)
    }

    static func rings(_ queue: Int) -> (table: UInt64, available: UInt64, used: UInt64) {
        let base = 0x10_0000 + UInt64(queue) * 0x1_0000
        return (base, base + 0x1000, base + 0x2000)
    }

    /// Makes `buffers` available on `queue` as one chain and notifies the device.
    mutating func publish(_ queue: Int, _ buffers: [Buffer]) throws {
        let rings = Self.rings(queue)
        let head = nextDescriptor[queue]
        for (offset, buffer) in buffers.enumerated() {
            let index = (head + UInt16(offset)) & (Self.queueSize - 1)
            let at = rings.table + 16 * UInt64(index)
            let last = offset == buffers.count - 1
            try memory.store(buffer.address, at: at)
            try memory.store(buffer.length, at: at + 8)
            try memory.store(UInt16((last ? 0 : 1) | (buffer.isWrite ? 2 : 0)), at: at + 12)
            try memory.store(last ? 0 : (index + 1) & (Self.queueSize - 1), at: at + 14)
        }
        nextDescriptor[queue] = (head + UInt16(buffers.count)) & (Self.queueSize - 1)
        try memory.store(head, at: rings.available + 4 + 2 * UInt64(availableIndex[queue] & (Self.queueSize - 1)))
        availableIndex[queue] &+= 1
        try memory.store(availableIndex[queue], at: rings.available + 2)
        device.notify(queue: queue)
    }

    /// New used elements of `queue` since the last call.
    mutating func used(_ queue: Int) throws -> [(head: UInt16, length: UInt32)] {
        let rings = Self.rings(queue)
        let index: UInt16 = try memory.load(at: rings.used + 2)
        var elements: [(UInt16, UInt32)] = []
        while lastUsed[queue] != index {
            let at = rings.used + 4 + 8 * UInt64(lastUsed[queue] & (Self.queueSize - 1))
            elements.append((UInt16(try memory.load(UInt32.self, at: at)), try memory.load(at: at + 4)))
            lastUsed[queue] &+= 1
        }
        return elements
    }

    /// Sends `frames` as one page frame list on `queue` (0 inflate, 1 deflate).
    mutating func sendFrames(_ frames: [UInt32], queue: Int) throws {
        var bytes: [UInt8] = []
        for frame in frames { withUnsafeBytes(of: frame.littleEndian) { bytes += $0 } }
        try memory.write(bytes, at: Self.listAddress)
        try publish(queue, [Buffer(address: Self.listAddress, length: UInt32(bytes.count), isWrite: false)])
    }

    /// Fills `count` pages from `pageBase + first * 4096` with a non-zero pattern.
    func fillPages(_ first: Int, count: Int) throws {
        for page in first..<first + count {
            try memory.write([UInt8](repeating: UInt8(page % 251 + 1), count: 4096), at: Self.pageBase + UInt64(page) * 4096)
        }
    }

    /// Whether page `page` (from `pageBase`) reads as zeros.
    func pageIsZero(_ page: Int) throws -> Bool {
        try memory.bytes(at: Self.pageBase + UInt64(page) * 4096, count: 4096).allSatisfy { $0 == 0 }
    }

    /// The frame number of page `page` from `pageBase`.
    static func frame(_ page: Int) -> UInt32 { UInt32((pageBase >> 12) + UInt64(page)) }
}

/// Statistics entries (le16 tag, le64 value).
func statisticsEntries(_ entries: [(UInt16, UInt64)]) -> [UInt8] {
    var bytes: [UInt8] = []
    for (tag, value) in entries {
        withUnsafeBytes(of: tag.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }
    return bytes
}

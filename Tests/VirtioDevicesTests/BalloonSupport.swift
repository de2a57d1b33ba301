import GuestMemory
import TestSupport
import Virtio
import VirtioDevices

/// A balloon activated over consecutive 16-entry queues in 16 MiB of guest RAM, driven the way a driver would.
struct BalloonHarness {
    static let queueSize: UInt16 = 16
    /// Where page frame lists and statistics buffers go.
    static let listAddress: UInt64 = 0x20_0000
    /// Pages the tests fill and give back, from 8 MiB.
    static let pageBase: UInt64 = 0x80_0000

    let memory: GuestMemory
    let interrupt = RecordingInterrupt()
    let device: Balloon
    private var driverRings: [DriverRing]

    /// A balloon offering `options`, activated with `acknowledged` (default: everything offered) and `queues`
    /// enabled queues (default: as many as the acknowledged features call for).
    init(_ options: Balloon.Options, acknowledged: VirtioFeatures? = nil, queues: Int? = nil) throws {
        memory = try GuestMemory(size: 16 << 20)
        device = Balloon(memory: memory, options: options)
        let features = acknowledged ?? device.features
        let count = queues ?? 2 + (features.contains(Balloon.Feature.statisticsQueue) ? 1 : 0)
            + (features.contains(Balloon.Feature.freePageReporting) ? 1 : 0)
        let memory = memory
        driverRings = (0..<count).map { queue in
            let base = Self.rings(queue)
            return DriverRing(
                memory: memory, size: Self.queueSize, descriptorTable: base.table, availableRing: base.available,
                usedRing: base.used, features: features)
        }
        let queues: [SplitQueue?] = try driverRings.map { try $0.queue() }
        try device.activate(
            features: features, queues: queues + Array(repeating: nil, count: device.queueCount - count), interrupt: interrupt)
    }

    static func rings(_ queue: Int) -> (table: UInt64, available: UInt64, used: UInt64) {
        let base = 0x10_0000 + UInt64(queue) * 0x1_0000
        return (base, base + 0x1000, base + 0x2000)
    }

    /// Makes `buffers` available on `queue` as one chain and notifies the device.
    mutating func publish(_ queue: Int, _ buffers: [ChainBuffer]) throws {
        try driverRings[queue].publish(buffers)
        device.notify(queue: queue)
    }

    /// New used elements of `queue` since the last call.
    mutating func used(_ queue: Int) throws -> [(head: UInt16, length: UInt32)] { try driverRings[queue].takeUsed() }

    /// Sends `frames` as one page frame list on `queue` (0 inflate, 1 deflate).
    mutating func sendFrames(_ frames: [UInt32], queue: Int) throws {
        var bytes: [UInt8] = []
        for frame in frames { withUnsafeBytes(of: frame.littleEndian) { bytes += $0 } }
        try memory.write(bytes, at: Self.listAddress)
        try publish(queue, [ChainBuffer(address: Self.listAddress, length: UInt32(bytes.count), isWrite: false)])
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

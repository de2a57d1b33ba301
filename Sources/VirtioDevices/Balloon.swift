import GuestMemory
import Synchronization
import Virtio

/// A virtio-balloon device (VIRTIO 1.2 §5.5): the host asks the guest to give back memory by raising `num_pages`,
/// the guest inflates the balloon with pages it no longer uses, and the device discards them from the host's
/// memory, so the VMM's resident memory drops. Deflated pages are simply accepted: they come back zeroed when the
/// guest touches them. With STATS_VQ the guest reports memory statistics, and with REPORTING it hands over free
/// pages (free page reporting), which are discarded likewise.
///
/// Queues, numbered consecutively over the queues that exist, as Linux sets them up: 0 inflateq, 1 deflateq, then
/// statsq when STATS_VQ is negotiated, then reporting_vq when REPORTING is (so reporting_vq is 2 without STATS_VQ).
/// FREE_PAGE_HINT is not offered. Configuration: `num_pages` (le32, set by the host), `actual` (le32, written by
/// the guest), `free_page_hint_cmd_id` (reads 0) and `poison_val` (le32, written by the guest with PAGE_POISON;
/// free pages reported while it is non-zero are kept, since a discarded page would come back as zeros).
///
/// The guest is untrusted: a page frame outside RAM, a page list whose length is not whole 4-byte frame numbers, a
/// statistics buffer of partial entries or a reported range that is not 4 KiB aligned sets DEVICE_NEEDS_RESET with
/// one line. A notification handles at most one queue's worth of chains.
///
/// The class is thread-safe: the transport drives it under its own lock, and the VMM may call `setTarget(bytes:)`,
/// `requestStatistics()` and read `latestStatistics` from any thread.
public final class Balloon: VirtioDevice, Sendable {
    /// Device-specific feature bits (VIRTIO 1.2 §5.5.3).
    public enum Feature {
        /// VIRTIO_BALLOON_F_STATS_VQ: the statistics queue exists.
        public static let statisticsQueue = VirtioFeatures(bit: 1)
        /// VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest deflates the balloon when it runs out of memory.
        public static let deflateOnOOM = VirtioFeatures(bit: 2)
        /// VIRTIO_BALLOON_F_PAGE_POISON: the guest tells what its free pages contain (`poison_val`).
        public static let pagePoison = VirtioFeatures(bit: 4)
        /// VIRTIO_BALLOON_F_REPORTING: the free page reporting queue exists.
        public static let freePageReporting = VirtioFeatures(bit: 5)
    }

    /// What the device offers.
    public struct Options: Sendable, Equatable {
        /// Offer DEFLATE_ON_OOM.
        public var deflateOnOOM: Bool
        /// Offer the statistics queue.
        public var statistics: Bool
        /// Offer free page reporting.
        public var freePageReporting: Bool
        /// Largest queue size, a power of two.
        public var queueSize: UInt16

        public init(
            deflateOnOOM: Bool = false, statistics: Bool = false, freePageReporting: Bool = false, queueSize: UInt16 = 64
        ) {
            self.deflateOnOOM = deflateOnOOM
            self.statistics = statistics
            self.freePageReporting = freePageReporting
            self.queueSize = queueSize
        }
    }

    /// The page size of `num_pages`, `actual` and page frame numbers.
    public static let pageSize: UInt64 = 4096

    public let features: VirtioFeatures
    public let queueCount: Int
    private let queueSize: UInt16
    private let engine: Mutex<BalloonEngine>

    /// A balloon over `memory` offering what `options` says.
    public init(memory: GuestMemory, options: Options = Options()) {
        precondition(
            options.queueSize != 0 && options.queueSize <= SplitQueue.maximumSize
                && options.queueSize & (options.queueSize - 1) == 0,
            "queue size \(options.queueSize) is not a power of two between 1 and \(SplitQueue.maximumSize)"
        )
        var offered: VirtioFeatures = [.version1, .eventIndex, .indirectDescriptors, Feature.pagePoison]
        if options.deflateOnOOM { offered.insert(Feature.deflateOnOOM) }
        if options.statistics { offered.insert(Feature.statisticsQueue) }
        if options.freePageReporting { offered.insert(Feature.freePageReporting) }
        features = offered
        queueCount = 2 + (options.statistics ? 1 : 0) + (options.freePageReporting ? 1 : 0)
        queueSize = options.queueSize
        engine = Mutex(BalloonEngine(memory: memory, queueSize: options.queueSize))
    }

    public var deviceType: VirtioDeviceType { .balloon }
    public func maximumQueueSize(_ queue: Int) -> UInt16 { queue < queueCount ? queueSize : 0 }
    /// num_pages, actual, free_page_hint_cmd_id, poison_val.
    public var configurationSize: Int { 16 }

    public func readConfiguration(offset: Int, into buffer: UnsafeMutableRawBufferPointer) {
        let fields = engine.withLock { [$0.targetPages, $0.actualPages, 0, $0.poisonValue] }
        for index in buffer.indices {
            let (byte, overflow) = offset.addingReportingOverflow(index)
            buffer[index] =
                !overflow && (0..<16).contains(byte)
                ? UInt8(truncatingIfNeeded: fields[byte / 4] >> (8 * UInt32(byte % 4))) : 0
        }
    }

    /// The driver writes `actual` and `poison_val`; writes elsewhere are ignored.
    public func writeConfiguration(offset: Int, bytes: UnsafeRawBufferPointer) {
        engine.withLock { engine in
            for (index, value) in bytes.enumerated() {
                let (byte, overflow) = offset.addingReportingOverflow(index)
                guard !overflow else { return }
                let shift = 8 * UInt32(byte % 4)
                let mask = ~(UInt32(0xFF) << shift)
                switch byte {
                case 4..<8: engine.actualPages = engine.actualPages & mask | UInt32(value) << shift
                case 12..<16: engine.poisonValue = engine.poisonValue & mask | UInt32(value) << shift
                default: continue
                }
            }
        }
    }

    public func activate(
        features: VirtioFeatures, queues: [SplitQueue?], interrupt: any InterruptSignal
    ) throws(VirtioDeviceError) {
        try engine.withLock { engine throws(VirtioDeviceError) in
            try engine.activate(features: features, queues: queues, interrupt: interrupt)
        }
    }

    public func notify(queue index: Int) {
        engine.withLock { $0.notify(queue: index) }
    }

    public func reset() {
        engine.withLock { $0.reset() }
    }

    /// Asks the guest to give back memory until it holds `bytes` fewer (rounded down to whole pages, and at most
    /// all of RAM): sets `num_pages` and, when the driver is running, sends a configuration-change notification.
    public func setTarget(bytes: UInt64) {
        let interrupt = engine.withLock { engine -> (any InterruptSignal)? in
            let pages = UInt32(clamping: min(bytes, engine.memory.size) / Self.pageSize)
            guard pages != engine.targetPages else { return nil }
            engine.targetPages = pages
            return engine.interrupt
        }
        interrupt?.signalConfigurationChange()
    }

    /// The balloon size the host asked for, in bytes.
    public var targetBytes: UInt64 { UInt64(engine.withLock { $0.targetPages }) * Self.pageSize }

    /// The balloon size the guest reports (`actual`), in bytes.
    public var actualBytes: UInt64 { UInt64(engine.withLock { $0.actualPages }) * Self.pageSize }

    /// The statistics the guest reported last; nil before the first report.
    public var latestStatistics: BalloonStatistics? { engine.withLock { $0.statistics } }

    /// Asks the guest for fresh statistics by returning the statistics buffer it left with the device; the new
    /// values show in `latestStatistics` once the driver sends the buffer back. Returns false when the device holds
    /// no buffer (statistics not negotiated, the driver not running, or a request already outstanding).
    @discardableResult
    public func requestStatistics() -> Bool {
        let (returned, notification) = engine.withLock { $0.returnStatisticsBuffer() }
        if let notification { notification.interrupt.signalUsedBuffers(queue: notification.queue) }
        return returned
    }
}

import GuestMemory
import Virtio

/// The balloon's queues and configuration, guarded by the `Balloon`'s lock.
struct BalloonEngine {
    static let inflateQueue = 0
    static let deflateQueue = 1

    let memory: GuestMemory
    /// num_pages: the balloon size the host asks for.
    var targetPages: UInt32 = 0
    /// actual: the balloon size the guest reports.
    var actualPages: UInt32 = 0
    /// poison_val, as the guest wrote it.
    var poisonValue: UInt32 = 0
    var negotiated: VirtioFeatures = []
    var inflateq: SplitQueue?
    var deflateq: SplitQueue?
    var statisticsq: SplitQueue?
    var reportingq: SplitQueue?
    /// Queue numbers of the optional queues, which depend on the negotiated features.
    var statisticsIndex = -1
    var reportingIndex = -1
    var interrupt: (any InterruptSignal)?
    var chain: DescriptorChain
    /// The statistics buffer the driver left with the device, to be returned when new statistics are wanted.
    var heldStatisticsHead: UInt16?
    var statistics: BalloonStatistics?

    init(memory: GuestMemory, queueSize: UInt16) {
        self.memory = memory
        chain = DescriptorChain(capacity: Int(queueSize))
    }

    /// Maps the driver's queues: inflateq and deflateq, then statsq and reporting_vq where negotiated, numbered
    /// consecutively over the queues that exist.
    mutating func activate(
        features: VirtioFeatures, queues: [SplitQueue?], interrupt: any InterruptSignal
    ) throws(VirtioDeviceError) {
        guard queues.count >= 2, let inflate = queues[Self.inflateQueue], let deflate = queues[Self.deflateQueue] else {
            throw .activation("the inflate and deflate queues must both be enabled")
        }
        var next = 2
        var statistics: SplitQueue?
        var reporting: SplitQueue?
        if features.contains(Balloon.Feature.statisticsQueue) {
            guard next < queues.count, let queue = queues[next] else {
                throw .activation("STATS_VQ was negotiated but queue \(next), the statistics queue, is not enabled")
            }
            statistics = queue
            statisticsIndex = next
            next += 1
        }
        if features.contains(Balloon.Feature.freePageReporting) {
            guard next < queues.count, let queue = queues[next] else {
                throw .activation("REPORTING was negotiated but queue \(next), the reporting queue, is not enabled")
            }
            reporting = queue
            reportingIndex = next
        }
        inflateq = inflate
        deflateq = deflate
        statisticsq = statistics
        reportingq = reporting
        negotiated = features
        self.interrupt = interrupt
    }

    mutating func notify(queue index: Int) {
        guard interrupt != nil else { return }
        switch index {
        case Self.inflateQueue: drain(\.inflateq, index) { $0.takePages(inflate: true) }
        case Self.deflateQueue: drain(\.deflateq, index) { $0.takePages(inflate: false) }
        case statisticsIndex where statisticsq != nil: receiveStatistics()
        case reportingIndex where reportingq != nil: drain(\.reportingq, index) { $0.takeReport() }
        default: return
        }
    }

    /// Drops the queues and the driver's configuration writes; the host's target stays.
    mutating func reset() {
        inflateq = nil
        deflateq = nil
        statisticsq = nil
        reportingq = nil
        statisticsIndex = -1
        reportingIndex = -1
        interrupt = nil
        negotiated = []
        actualPages = 0
        poisonValue = 0
        heldStatisticsHead = nil
    }

    /// Handles each chain on the queue at `queue` (number `index`) with `handle`, which works on `chain` and returns
    /// false after failing the device; completes each with length 0. At most one queue's worth of chains.
    private mutating func drain(
        _ queue: WritableKeyPath<BalloonEngine, SplitQueue?>, _ index: Int, _ handle: (inout BalloonEngine) -> Bool
    ) {
        guard var ring = self[keyPath: queue], let interrupt else { return }
        var budget = Int(ring.size)
        ring.disableNotifications()
        var pending = false
        do {
            repeat {
                while budget > 0, try ring.nextChain(into: &chain) {
                    budget -= 1
                    guard handle(&self) else { return }
                    ring.addUsed(head: chain.head, length: 0)
                }
                if ring.needsNotification() { interrupt.signalUsedBuffers(queue: index) }
                pending = ring.enableNotifications()
            } while pending && budget > 0
        } catch {
            return fail("queue \(index): \(error)")
        }
        self[keyPath: queue] = ring
        // Stopped at the budget with chains left: the driver published them already and will not notify again.
        if pending { interrupt.requestService(queue: index) }
    }

    /// Takes the statistics buffers the driver made available: parses each and holds the newest, returning any
    /// older one (the driver should keep only one with the device).
    private mutating func receiveStatistics() {
        guard var queue = statisticsq, let interrupt else { return }
        var budget = Int(queue.size)
        do {
            // Re-arming after each drain makes the driver's next buffer (after `requestStatistics`) notify us; with
            // EVENT_IDX its kick would be suppressed otherwise.
            repeat {
                while budget > 0, try queue.nextChain(into: &chain) {
                    budget -= 1
                    guard let parsed = parseStatistics() else { return }
                    statistics = parsed
                    if let held = heldStatisticsHead { queue.addUsed(head: held, length: 0) }
                    heldStatisticsHead = chain.head
                }
            } while budget > 0 && queue.enableNotifications()
        } catch {
            return fail("statistics queue: \(error)")
        }
        if queue.needsNotification() { interrupt.signalUsedBuffers(queue: statisticsIndex) }
        statisticsq = queue
    }

    /// Returns the held statistics buffer so that the driver refills it: whether one was held, and the
    /// notification the caller must send (outside the device's lock) when the driver wants one.
    mutating func returnStatisticsBuffer() -> (
        returned: Bool, notification: (interrupt: any InterruptSignal, queue: Int)?
    ) {
        guard var queue = statisticsq, let interrupt, let head = heldStatisticsHead else { return (false, nil) }
        queue.addUsed(head: head, length: 0)
        heldStatisticsHead = nil
        let notify = queue.needsNotification()
        statisticsq = queue
        return (true, notify ? (interrupt, statisticsIndex) : nil)
    }

    /// Drops the queues and asks the driver for a reset (once: nothing runs afterwards).
    mutating func fail(_ reason: String) {
        let interrupt = self.interrupt
        inflateq = nil
        deflateq = nil
        statisticsq = nil
        reportingq = nil
        heldStatisticsHead = nil
        self.interrupt = nil
        interrupt?.signalNeedsReset(reason: "virtio-balloon: \(reason)")
    }
}

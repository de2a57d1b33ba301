import Glibc
import GuestMemory
import Virtio

/// A virtio-rng device (VIRTIO 1.2 §5.4): one request queue, no configuration space. Every chain the driver
/// makes available is a set of device-writable buffers that the device fills from the host kernel's CSPRNG.
///
/// A notification handles at most one queue's worth of chains and at most `maximumBytesPerChain` bytes per
/// chain, so a driver that keeps refilling the queue cannot pin the calling thread; chains left over wait for
/// the driver's next notification.
public struct Entropy: VirtioDevice {
    /// Most bytes written into one chain; the used length tells the driver how many it got.
    public static let maximumBytesPerChain = 64 * 1024

    private let memory: GuestMemory
    private let queueSize: UInt16
    private var queue: SplitQueue?
    private var interrupt: (any InterruptSignal)?
    private var chain: DescriptorChain

    /// An entropy device writing into `memory`, offering a queue of up to `queueSize` descriptors (a power of two).
    public init(memory: GuestMemory, queueSize: UInt16 = 256) {
        precondition(
            queueSize != 0 && queueSize <= SplitQueue.maximumSize && queueSize & (queueSize - 1) == 0,
            "queue size \(queueSize) is not a power of two between 1 and \(SplitQueue.maximumSize)"
        )
        self.memory = memory
        self.queueSize = queueSize
        chain = DescriptorChain(capacity: Int(queueSize))
    }

    public var deviceType: VirtioDeviceType { .entropy }
    public var features: VirtioFeatures { [.version1, .eventIndex, .indirectDescriptors] }
    public var queueCount: Int { 1 }
    public func maximumQueueSize(_ queue: Int) -> UInt16 { queue == 0 ? queueSize : 0 }
    public var configurationSize: Int { 0 }

    public func readConfiguration(offset: Int, into buffer: UnsafeMutableRawBufferPointer) {
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
    }

    public mutating func writeConfiguration(offset: Int, bytes: UnsafeRawBufferPointer) {}

    public mutating func activate(
        features: VirtioFeatures, queues: [SplitQueue?], interrupt: any InterruptSignal
    ) throws(VirtioDeviceError) {
        guard queues.count == 1, let queue = queues[0] else { throw .activation("the request queue is not enabled") }
        self.queue = queue
        self.interrupt = interrupt
    }

    public mutating func notify(queue index: Int) {
        guard index == 0, var queue, let interrupt else { return }
        var budget = Int(queue.size)
        queue.disableNotifications()
        var pending = false
        do {
            repeat {
                while budget > 0, try queue.nextChain(into: &chain) {
                    guard chain.readableCount == 0 else {
                        fail(interrupt, "chain \(chain.head) has device-readable buffers; the device only writes")
                        return
                    }
                    guard let written = fill(chain) else {
                        fail(interrupt, "chain \(chain.head) has a buffer outside guest RAM")
                        return
                    }
                    queue.addUsed(head: chain.head, length: written)
                    budget -= 1
                }
                if queue.needsNotification() { interrupt.signalUsedBuffers(queue: index) }
                pending = queue.enableNotifications()
            } while pending && budget > 0
        } catch {
            fail(interrupt, "\(error)")
            return
        }
        self.queue = queue
        // Stopped at the budget with buffers left: the driver published them already and will not notify again.
        if pending { interrupt.requestService(queue: index) }
    }

    public mutating func reset() {
        queue = nil
        interrupt = nil
    }

    /// Drops the queue and asks the driver for a reset.
    private mutating func fail(_ interrupt: any InterruptSignal, _ reason: String) {
        queue = nil
        interrupt.signalNeedsReset(reason: "virtio-rng: \(reason)")
    }

    /// Fills the chain's writable segments with random bytes, up to `maximumBytesPerChain`; returns the count
    /// written, or nil when a segment is not in guest RAM.
    private func fill(_ chain: DescriptorChain) -> UInt32? {
        var written = 0
        for segment in chain where written < Self.maximumBytesPerChain {
            let count = min(Int(segment.length), Self.maximumBytesPerChain - written)
            guard let pointer = try? memory.pointer(at: segment.address, length: UInt64(count)) else { return nil }
            let filled = Self.random(UnsafeMutableRawBufferPointer(start: pointer, count: count))
            written += filled
            if filled < count { break }
        }
        return UInt32(written)
    }

    /// Fills `buffer` through getentropy(3), glibc's wrapper over getrandom(2), which takes at most 256 bytes a
    /// call; returns how many bytes were filled before any failure.
    private static func random(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        var done = 0
        while done < buffer.count {
            let count = min(256, buffer.count - done)
            guard getentropy(base + done, count) == 0 else { return done }
            done += count
        }
        return done
    }
}

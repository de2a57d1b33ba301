import GuestMemory
import Virtio

/// The transmit half of a virtio-net device: gathers each chain the driver makes available on the transmit
/// queue (a virtio-net header, then the frame) into one host buffer and hands the frame to the backend.
///
/// A transmit chain must be device-readable only and hold the 12-byte header and at most
/// `Net.maximumFrameLength` bytes of frame. When the backend cannot take a frame, its chain stays unused and the
/// queue waits until the backend's descriptor becomes writable. A pass sends at most one queue's worth of
/// frames, so that other work on the thread gets its turn; the caller schedules the next pass.
struct NetTransmitter {
    private let memory: GuestMemory
    /// Whether the backend takes frames with the header (else the device strips it).
    private let headerToBackend: Bool
    private let buffer: NetFrameBuffer
    private var chain: DescriptorChain
    private var queue: SplitQueue?
    /// The chain whose frame, `blockedLength` bytes in `buffer`, waits for the backend to take it.
    private var blockedHead: UInt16?
    private var blockedLength = 0
    /// Frames the backend took.
    private(set) var frames: UInt64 = 0
    /// Frames dropped: shorter than an Ethernet header, or refused by the backend.
    private(set) var drops: UInt64 = 0

    init(memory: GuestMemory, headerToBackend: Bool, queueSize: UInt16) {
        self.memory = memory
        self.headerToBackend = headerToBackend
        buffer = NetFrameBuffer(capacity: NetHeader.length + Net.maximumFrameLength)
        chain = DescriptorChain(capacity: Int(queueSize))
    }

    /// Whether a frame waits for the backend to become writable.
    var isBlocked: Bool { queue != nil && blockedHead != nil }

    /// Starts transmitting from `queue`.
    mutating func start(queue: SplitQueue) {
        stop()
        self.queue = queue
    }

    /// Drops the queue and any frame waiting for the backend.
    mutating func stop() {
        queue = nil
        blockedHead = nil
    }

    /// What a pass did.
    struct Outcome {
        /// The driver wants a used-buffer notification.
        var notify = false
        /// The pass used up its budget: chains may be left, and the driver was not asked to notify for them.
        var exhausted = false
    }

    /// Sends the frame waiting for the backend, then the chains the driver made available, at most one queue's
    /// worth. Throws when the driver broke a rule.
    mutating func pump(to backend: any NetBackend) throws(NetFailure) -> Outcome {
        var outcome = Outcome()
        guard var queue else { return outcome }
        defer { self.queue = queue }
        if let head = blockedHead {
            guard send(blockedLength, to: backend) else { return outcome }
            queue.addUsed(head: head, length: 0)
            blockedHead = nil
        }
        var budget = Int(queue.size)
        queue.disableNotifications()
        repeat {
            while budget > 0, try nextChain(&queue) {
                let length = try gather()
                guard send(length, to: backend) else {
                    blockedHead = chain.head
                    blockedLength = length
                    outcome.notify = queue.needsNotification() || outcome.notify
                    return outcome
                }
                queue.addUsed(head: chain.head, length: 0)
                budget -= 1
            }
            outcome.notify = queue.needsNotification() || outcome.notify
        } while budget > 0 && queue.enableNotifications()
        outcome.exhausted = budget == 0
        return outcome
    }

    /// Hands the `length` bytes in `buffer` to the backend, without the header when it takes bare frames;
    /// returns false when the backend would block. Frames it cannot use are dropped.
    private mutating func send(_ length: Int, to backend: any NetBackend) -> Bool {
        guard length >= NetHeader.length + NetHeader.minimumFrameLength else {
            drops += 1
            return true
        }
        do {
            try backend.send(buffer.slice(headerToBackend ? 0 : NetHeader.length, length))
            frames += 1
        } catch {
            switch error {
            case .wouldBlock: return false
            case .failed: drops += 1
            }
        }
        return true
    }

    /// Pops the next transmit chain into `chain` and checks it; false when the driver has made none available.
    private mutating func nextChain(_ queue: inout SplitQueue) throws(NetFailure) -> Bool {
        do {
            guard try queue.nextChain(into: &chain) else { return false }
        } catch {
            throw NetFailure(reason: "transmit queue: \(error)")
        }
        guard chain.readableCount == chain.count else {
            throw NetFailure(reason: "transmit chain \(chain.head) has device-writable buffers")
        }
        guard chain.readableLength >= UInt64(NetHeader.length) else {
            throw NetFailure(
                reason: "transmit chain \(chain.head) holds \(chain.readableLength) bytes, less than the 12-byte header")
        }
        guard chain.readableLength <= UInt64(NetHeader.length + Net.maximumFrameLength) else {
            throw NetFailure(
                reason: "transmit chain \(chain.head) holds \(chain.readableLength) bytes, more than a "
                    + "\(Net.maximumFrameLength)-byte frame and its header")
        }
        return true
    }

    /// Copies the chain's buffers into `buffer`; returns the length.
    private func gather() throws(NetFailure) -> Int {
        guard let base = buffer.bytes.baseAddress else { return 0 }
        var offset = 0
        for segment in chain where segment.length > 0 {
            guard let pointer = try? memory.pointer(at: segment.address, length: UInt64(segment.length)) else {
                throw NetFailure(reason: "transmit chain \(chain.head) has a buffer outside guest RAM")
            }
            (base + offset).copyMemory(from: pointer, byteCount: Int(segment.length))
            offset += Int(segment.length)
        }
        return offset
    }
}

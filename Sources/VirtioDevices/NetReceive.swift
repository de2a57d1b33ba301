import GuestMemory
import Virtio

/// The receive half of a virtio-net device: moves frames from the backend into the chains the driver posts on
/// the receive queue, each frame behind a virtio-net header.
///
/// Every receive chain must be device-writable only and hold at least the 12-byte header. Without
/// MRG_RXBUF a frame goes into one chain; a chain too small for it keeps waiting for a smaller frame and the
/// frame is dropped. With MRG_RXBUF a frame spreads over as many chains as it needs, and num_buffers in the
/// first one says how many. When the driver has posted no buffers the frame stays here and nothing more is
/// read from the backend until the driver's next receive-queue notification.
struct NetReceiver {
    /// A chain filled with part of a frame, returned to the driver once the whole frame is in.
    private struct Part {
        var head: UInt16
        var length: UInt32
    }

    private let memory: GuestMemory
    /// Whether the backend's frames carry the header (else the device writes a zero one).
    private let headerFromBackend: Bool
    private let buffer: NetFrameBuffer
    private var chain: DescriptorChain
    private var queue: SplitQueue?
    private var mergeable = false
    private var accepted: NetOffloads = []
    /// Length, header included, of the frame in `buffer` that waits for guest buffers; 0 when none.
    private var pending = 0
    /// Without MRG_RXBUF: `chain` holds a chain popped for a frame too large for it, kept for the next frame.
    private var holdsChain = false
    /// With MRG_RXBUF: bytes of the pending frame already copied into `parts`.
    private var copied = 0
    private var parts: [Part]
    /// With MRG_RXBUF: guest addresses of the two bytes of num_buffers, in the first part.
    private var countAddresses: (UInt64, UInt64) = (0, 0)
    /// Frames delivered to the guest.
    private(set) var frames: UInt64 = 0
    /// Frames dropped: malformed or not negotiated headers, or too large for a receive chain.
    private(set) var drops: UInt64 = 0

    init(memory: GuestMemory, headerFromBackend: Bool, queueSize: UInt16) {
        self.memory = memory
        self.headerFromBackend = headerFromBackend
        buffer = NetFrameBuffer(capacity: NetHeader.length + Net.maximumFrameLength)
        chain = DescriptorChain(capacity: Int(queueSize))
        parts = []
        parts.reserveCapacity(Int(queueSize))
    }

    /// Whether a frame waits for the driver to post receive buffers.
    var isWaitingForBuffers: Bool { queue != nil && pending != 0 }

    /// Starts receiving into `queue`, with MRG_RXBUF when `mergeable`, passing on the offloads in `accepted`.
    mutating func start(queue: SplitQueue, mergeable: Bool, accepted: NetOffloads) {
        stop()
        self.queue = queue
        self.mergeable = mergeable
        self.accepted = accepted
    }

    /// Drops the queue and any frame or chains in progress.
    mutating func stop() {
        queue = nil
        pending = 0
        holdsChain = false
        copied = 0
        parts.removeAll(keepingCapacity: true)
    }

    /// Moves frames from `backend` into the guest until the backend has none left or the driver has no buffers
    /// posted; returns whether the driver wants a used-buffer notification. Throws when the driver broke a rule.
    mutating func pump(from backend: any NetBackend) throws(NetFailure) -> Bool {
        guard var queue else { return false }
        defer { self.queue = queue }
        while true {
            if pending == 0 {
                guard let length = read(from: backend) else {
                    // Refills need no notification until a frame is left waiting.
                    queue.disableNotifications()
                    break
                }
                pending = length
            }
            if try place(&queue) { continue }
            // No buffers: the frame waits for the driver's notification, unless buffers arrived meanwhile.
            if !queue.enableNotifications() { break }
        }
        return queue.needsNotification()
    }

    /// Reads frames until one may go to the guest and returns its length with the header, or nil when the
    /// backend has none waiting.
    private mutating func read(from backend: any NetBackend) -> Int? {
        while true {
            if headerFromBackend {
                guard let length = backend.receive(into: buffer.bytes) else { return nil }
                if length >= NetHeader.length + NetHeader.minimumFrameLength, let header = buffer.bytes.baseAddress,
                    NetHeader.admit(header, accepted: accepted)
                {
                    return length
                }
            } else {
                guard let length = backend.receive(into: buffer.suffix(from: NetHeader.length)) else { return nil }
                if length >= NetHeader.minimumFrameLength {
                    buffer.bytes[0..<NetHeader.length].initializeMemory(as: UInt8.self, repeating: 0)
                    return NetHeader.length + length
                }
            }
            drops += 1
        }
    }

    /// Places the pending frame in the guest's buffers; returns false when they ran out first.
    private mutating func place(_ queue: inout SplitQueue) throws(NetFailure) -> Bool {
        if mergeable { return try placeMerged(&queue) }
        if !holdsChain {
            guard try nextChain(&queue) else { return false }
        }
        holdsChain = false
        guard chain.writableLength >= UInt64(pending) else {
            holdsChain = true
            pending = 0
            drops += 1
            return true
        }
        buffer.bytes.storeBytes(of: UInt16(1).littleEndian, toByteOffset: NetHeader.bufferCountOffset, as: UInt16.self)
        try copy(from: 0, count: pending, recordingCount: false)
        queue.addUsed(head: chain.head, length: UInt32(pending))
        pending = 0
        frames += 1
        return true
    }

    /// Spreads the pending frame over as many chains as it takes, then returns them all at once.
    private mutating func placeMerged(_ queue: inout SplitQueue) throws(NetFailure) -> Bool {
        while copied < pending {
            // Every descriptor is already holding part of this frame: the driver can post nothing more.
            guard parts.count < Int(queue.size) else {
                throw NetFailure(
                    reason: "the receive queue's \(queue.size) buffers hold fewer than the \(pending) bytes of one frame")
            }
            guard try nextChain(&queue) else { return false }
            let count = min(Int(chain.writableLength), pending - copied)
            try copy(from: copied, count: count, recordingCount: copied == 0)
            parts.append(Part(head: chain.head, length: UInt32(count)))
            copied += count
        }
        let count = UInt16(parts.count)
        try store(UInt8(truncatingIfNeeded: count), at: countAddresses.0)
        try store(UInt8(truncatingIfNeeded: count >> 8), at: countAddresses.1)
        for part in parts { queue.addUsed(head: part.head, length: part.length) }
        parts.removeAll(keepingCapacity: true)
        copied = 0
        pending = 0
        frames += 1
        return true
    }

    /// Writes one byte of num_buffers into guest memory.
    private func store(_ byte: UInt8, at address: UInt64) throws(NetFailure) {
        guard let pointer = try? memory.pointer(at: address, length: 1) else {
            throw NetFailure(reason: "receive buffer at 0x\(String(address, radix: 16)) is outside guest RAM")
        }
        pointer.storeBytes(of: byte, as: UInt8.self)
    }

    /// Pops the next receive chain into `chain` and checks it; false when the driver has posted none.
    private mutating func nextChain(_ queue: inout SplitQueue) throws(NetFailure) -> Bool {
        do {
            guard try queue.nextChain(into: &chain) else { return false }
        } catch {
            throw NetFailure(reason: "receive queue: \(error)")
        }
        guard chain.readableCount == 0 else {
            throw NetFailure(reason: "receive chain \(chain.head) has device-readable buffers")
        }
        guard chain.writableLength >= UInt64(NetHeader.length) else {
            throw NetFailure(
                reason: "receive chain \(chain.head) holds \(chain.writableLength) bytes, less than the 12-byte header")
        }
        return true
    }

    /// Copies `count` bytes of the frame from `offset` into `chain`'s buffers, which hold at least that many;
    /// when `recordingCount`, notes where num_buffers lands.
    private mutating func copy(from offset: Int, count: Int, recordingCount: Bool) throws(NetFailure) {
        var source = offset
        let end = offset + count
        for segment in chain where source < end {
            let length = min(Int(segment.length), end - source)
            guard length > 0 else { continue }
            guard let pointer = try? memory.pointer(at: segment.address, length: UInt64(length)),
                let base = buffer.bytes.baseAddress
            else {
                throw NetFailure(reason: "receive chain \(chain.head) has a buffer outside guest RAM")
            }
            if recordingCount {
                let field = NetHeader.bufferCountOffset
                if (source..<source + length).contains(field) {
                    countAddresses.0 = segment.address + UInt64(field - source)
                }
                if (source..<source + length).contains(field + 1) {
                    countAddresses.1 = segment.address + UInt64(field + 1 - source)
                }
            }
            pointer.copyMemory(from: base + source, byteCount: length)
            source += length
        }
    }
}

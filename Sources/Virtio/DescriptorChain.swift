/// One descriptor chain popped from a virtqueue, as guest buffers in chain order: every device-readable
/// segment first, then every device-writable one.
///
/// The storage is allocated once, at `init(capacity:)`, and reused by each `SplitQueue.nextChain(into:)`;
/// popping a chain allocates nothing as long as the chain value is not shared.
public struct DescriptorChain: RandomAccessCollection, Sendable {
    /// One guest buffer.
    public struct Segment: Sendable, Equatable {
        /// Guest-physical address.
        public var address: UInt64
        /// Length in bytes.
        public var length: UInt32
        /// Whether the device writes this buffer (else it reads it).
        public var isWrite: Bool

        public init(address: UInt64, length: UInt32, isWrite: Bool) {
            self.address = address
            self.length = length
            self.isWrite = isWrite
        }
    }

    private var storage: [Segment]
    /// The number of segments.
    public private(set) var count = 0
    /// The head descriptor index, to hand back to `SplitQueue.addUsed(head:length:)`.
    public private(set) var head: UInt16 = 0
    /// The number of device-readable segments; they are `self[0..<readableCount]`.
    public private(set) var readableCount = 0
    /// Total bytes the device may read.
    public private(set) var readableLength: UInt64 = 0
    /// Total bytes the device may write.
    public private(set) var writableLength: UInt64 = 0

    /// An empty chain able to hold `capacity` segments; it must be at least the size of the queues it is used with.
    public init(capacity: Int) {
        storage = Array(repeating: Segment(address: 0, length: 0, isWrite: false), count: capacity)
    }

    /// The most segments the chain can hold.
    public var capacity: Int { storage.count }
    public var startIndex: Int { 0 }
    public var endIndex: Int { count }

    public subscript(position: Int) -> Segment {
        precondition(position >= 0 && position < count, "segment index \(position) out of range 0..<\(count)")
        return storage[position]
    }

    mutating func reset(head: UInt16) {
        self.head = head
        count = 0
        readableCount = 0
        readableLength = 0
        writableLength = 0
    }

    /// Appends a segment; the caller has checked capacity and ordering.
    mutating func append(_ segment: Segment) {
        storage[count] = segment
        count += 1
        if segment.isWrite {
            writableLength += UInt64(segment.length)
        } else {
            readableCount += 1
            readableLength += UInt64(segment.length)
        }
    }
}

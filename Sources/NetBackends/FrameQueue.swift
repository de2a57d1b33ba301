/// A bounded first-in, first-out queue of frames in storage allocated once: `capacity` slots of `slotSize`
/// bytes. A frame that finds the queue full, or is longer than a slot, is dropped and counted.
struct FrameQueue: ~Copyable {
    let capacity: Int
    let slotSize: Int
    private let storage: UnsafeMutableRawPointer
    private let lengths: UnsafeMutablePointer<Int>
    private var first = 0
    /// Frames queued.
    private(set) var count = 0
    /// Frames dropped since the queue was made.
    private(set) var drops: UInt64 = 0

    init(capacity: Int, slotSize: Int) {
        precondition(capacity > 0 && slotSize > 0, "a frame queue needs at least one slot of at least one byte")
        self.capacity = capacity
        self.slotSize = slotSize
        storage = .allocate(byteCount: capacity * slotSize, alignment: 16)
        lengths = .allocate(capacity: capacity)
        lengths.initialize(repeating: 0, count: capacity)
    }

    deinit {
        storage.deallocate()
        lengths.deallocate()
    }

    /// Appends a copy of `frame`, or drops it; returns whether the queue was empty before.
    mutating func push(_ frame: UnsafeRawBufferPointer) -> Bool {
        let wasEmpty = count == 0
        guard count < capacity, frame.count <= slotSize else {
            drops += 1
            return wasEmpty
        }
        let slot = (first + count) % capacity
        if let source = frame.baseAddress {
            (storage + slot * slotSize).copyMemory(from: source, byteCount: frame.count)
        }
        lengths[slot] = frame.count
        count += 1
        return wasEmpty
    }

    /// Removes the oldest frame, copying it into `buffer` (truncated to its size); returns the length copied,
    /// or nil when the queue is empty.
    mutating func pop(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard count > 0 else { return nil }
        let length = min(lengths[first], buffer.count)
        if let target = buffer.baseAddress {
            target.copyMemory(from: storage + first * slotSize, byteCount: length)
        }
        first = (first + 1) % capacity
        count -= 1
        return length
    }
}

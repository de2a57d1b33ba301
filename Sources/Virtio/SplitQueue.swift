import GuestMemory
import Synchronization

/// Where the device stands in a queue: everything about a split queue that lives outside guest memory, which a
/// paused device saves and a restored one resumes from.
public struct QueuePosition: Sendable, Equatable {
    /// The available-ring index of the next chain the device will pop (last_avail_idx).
    public var lastAvailableIndex: UInt16
    /// The device's used-ring index, as last published in used.idx.
    public var usedIndex: UInt16
    /// `usedIndex` when the device last decided whether to notify the driver (EVENT_IDX's old index).
    public var signalledUsedIndex: UInt16

    public init(lastAvailableIndex: UInt16, usedIndex: UInt16, signalledUsedIndex: UInt16) {
        self.lastAvailableIndex = lastAvailableIndex
        self.usedIndex = usedIndex
        self.signalledUsedIndex = signalledUsedIndex
    }
}

/// The device side of a split virtqueue (VIRTIO 1.2 §2.7) in guest memory.
///
/// The three rings are checked against guest RAM once, at creation; every descriptor is checked as it is
/// read, each field copied out of guest memory exactly once, so a driver rewriting memory underneath cannot
/// slip a value past a check. A malformed ring yields a `VirtqueueError`, never a trap, a hang or an access
/// outside guest RAM.
///
/// A device drains a queue with notifications suppressed while it works and re-enabled before it sleeps:
///
///     queue.disableNotifications()
///     repeat {
///         while try queue.nextChain(into: &chain) { …; queue.addUsed(head: chain.head, length: written) }
///         if queue.needsNotification() { interrupt.signalUsedBuffers(queue: index) }
///     } while queue.enableNotifications()
public struct SplitQueue: Sendable {
    /// The largest split queue size.
    public static let maximumSize: UInt16 = 32768

    /// Number of descriptors, a power of two.
    public let size: UInt16
    /// Whether VIRTIO_F_EVENT_IDX was negotiated.
    public let usesEventIndex: Bool
    /// Whether VIRTIO_F_INDIRECT_DESC was negotiated.
    public let allowsIndirect: Bool
    /// The available-ring index of the next chain the device will pop (last_avail_idx).
    public private(set) var lastAvailableIndex: UInt16 = 0
    /// The device's used-ring index, as last published in used.idx.
    public private(set) var usedIndex: UInt16 = 0
    /// `usedIndex` when `needsNotification()` last ran.
    private var signalledUsedIndex: UInt16 = 0

    private let memory: GuestMemory
    /// The used ring's guest address: the device's writes there are recorded in `GuestMemory.writtenPages`.
    private let usedRingAddress: UInt64
    private nonisolated(unsafe) let descriptors: UnsafeMutableRawPointer
    private nonisolated(unsafe) let available: UnsafeMutableRawPointer
    private nonisolated(unsafe) let used: UnsafeMutableRawPointer

    private static let nextFlag: UInt16 = 1
    private static let writeFlag: UInt16 = 2
    private static let indirectFlag: UInt16 = 4
    /// avail.flags: the driver asks for no used-buffer notifications.
    private static let noInterruptFlag: UInt16 = 1
    /// used.flags: the device asks for no available-buffer notifications.
    private static let noNotifyFlag: UInt16 = 1
    /// Most bytes one chain may describe.
    private static let maximumChainBytes: UInt64 = 1 << 32

    /// A queue of `size` descriptors with its rings at the given guest-physical addresses, using the ring
    /// features in the negotiated `features`.
    public init(
        memory: GuestMemory, size: UInt16, descriptorTable: UInt64, availableRing: UInt64, usedRing: UInt64,
        features: VirtioFeatures
    ) throws(VirtqueueError) {
        guard size != 0, size <= Self.maximumSize, size & (size - 1) == 0 else { throw .invalidQueueSize(size) }
        let eventIndex = features.contains(.eventIndex)
        let trailer: UInt64 = eventIndex ? 2 : 0
        let entries = UInt64(size)
        let tableLength = 16 * entries
        let availableLength = 4 + 2 * entries + trailer
        let usedLength = 4 + 8 * entries + trailer
        descriptors = try Self.map(memory, .descriptorTable, descriptorTable, length: tableLength, alignment: 16)
        available = try Self.map(memory, .availableRing, availableRing, length: availableLength, alignment: 2)
        used = try Self.map(memory, .usedRing, usedRing, length: usedLength, alignment: 4)
        // Device writes to the used ring must not feed back into what the device reads. All three ranges are
        // inside RAM, so the sums cannot overflow.
        func overlapsUsed(_ start: UInt64, _ length: UInt64) -> Bool {
            start < usedRing + usedLength && usedRing < start + length
        }
        if overlapsUsed(descriptorTable, tableLength) { throw .overlappingRings(.usedRing, .descriptorTable) }
        if overlapsUsed(availableRing, availableLength) { throw .overlappingRings(.usedRing, .availableRing) }
        self.memory = memory
        usedRingAddress = usedRing
        self.size = size
        usesEventIndex = eventIndex
        allowsIndirect = features.contains(.indirectDescriptors)
    }

    private static func map(
        _ memory: GuestMemory, _ ring: VirtqueueRing, _ address: UInt64, length: UInt64, alignment: UInt64
    ) throws(VirtqueueError) -> UnsafeMutableRawPointer {
        guard address % alignment == 0 else { throw .misalignedRing(ring, address: address, alignment: alignment) }
        guard let pointer = try? memory.pointer(at: address, length: length) else {
            throw .ringOutsideRAM(ring, address: address, length: length)
        }
        return pointer
    }

    /// The device's position in the queue.
    public var position: QueuePosition {
        QueuePosition(lastAvailableIndex: lastAvailableIndex, usedIndex: usedIndex, signalledUsedIndex: signalledUsedIndex)
    }

    /// Puts the device back where `position` says, as after a restore; the rings in guest memory are the driver's
    /// and are not touched.
    public mutating func restore(_ position: QueuePosition) {
        lastAvailableIndex = position.lastAvailableIndex
        usedIndex = position.usedIndex
        signalledUsedIndex = position.signalledUsedIndex
    }

    /// Pops the next available chain into `chain`, which must hold at least `size` segments.
    /// Returns false when the driver has made nothing new available.
    public mutating func nextChain(into chain: inout DescriptorChain) throws(VirtqueueError) -> Bool {
        precondition(chain.capacity >= Int(size), "chain capacity \(chain.capacity) is below the queue size \(size)")
        let availableIndex = load(UInt16.self, available, 2)
        // Pairs with the driver's write barrier before it publishes avail.idx: ring entries and descriptors
        // are read only after the index that made them visible.
        atomicMemoryFence(ordering: .acquiring)
        let pending = availableIndex &- lastAvailableIndex
        if pending == 0 { return false }
        guard pending <= size else {
            throw .availableIndexJump(lastSeen: lastAvailableIndex, available: availableIndex, size: size)
        }
        let head = load(UInt16.self, available, 4 + 2 * Int(lastAvailableIndex & (size - 1)))
        guard head < size else { throw .headOutOfRange(head: head, size: size) }
        try walk(head: head, into: &chain)
        lastAvailableIndex &+= 1
        return true
    }

    /// Reads the chain starting at `head`, validating every descriptor.
    private func walk(head: UInt16, into chain: inout DescriptorChain) throws(VirtqueueError) {
        chain.reset(head: head)
        var table = descriptors
        var tableSize = size
        var index = head
        var isIndirect = false
        // Descriptors read from the current table; more than the table holds means a loop.
        var visited: UInt16 = 0
        var bytes: UInt64 = 0
        while true {
            guard visited < tableSize else { throw .chainTooLong(head: head, limit: size) }
            visited += 1
            let offset = 16 * Int(index)
            let address = load(UInt64.self, table, offset)
            let length = load(UInt32.self, table, offset + 8)
            let flags = load(UInt16.self, table, offset + 12)
            let next = load(UInt16.self, table, offset + 14)
            let location = DescriptorLocation(index: index, isIndirect: isIndirect)

            if flags & Self.indirectFlag != 0 {
                guard allowsIndirect else { throw .indirectNotNegotiated(location) }
                guard !isIndirect else { throw .nestedIndirect(location) }
                guard flags & Self.nextFlag == 0 else { throw .indirectWithNext(location) }
                guard length != 0, length % 16 == 0, length / 16 <= UInt32(size) else {
                    throw .invalidIndirectLength(location, length: length)
                }
                guard let indirectTable = try? memory.pointer(at: address, length: UInt64(length)) else {
                    throw .indirectTableOutsideRAM(location, address: address, length: length)
                }
                table = indirectTable
                tableSize = UInt16(length / 16)
                index = 0
                visited = 0
                isIndirect = true
                continue
            }

            guard memory.contains(address, length: UInt64(length)) else {
                throw .bufferOutsideRAM(location, address: address, length: length)
            }
            let isWrite = flags & Self.writeFlag != 0
            guard isWrite || chain.readableCount == chain.count else { throw .readableAfterWritable(location) }
            guard chain.count < Int(size) else { throw .chainTooLong(head: head, limit: size) }
            bytes += UInt64(length)
            guard bytes <= Self.maximumChainBytes else { throw .chainTooLarge(head: head) }
            chain.append(DescriptorChain.Segment(address: address, length: length, isWrite: isWrite))

            guard flags & Self.nextFlag != 0 else { return }
            guard next < tableSize else { throw .nextOutOfRange(location, next: next, tableSize: tableSize) }
            index = next
        }
    }

    /// Returns the chain that started at `head` to the driver, with `length` bytes written into it.
    public mutating func addUsed(head: UInt16, length: UInt32) {
        precondition(head < size, "head \(head) is outside a queue of \(size)")
        let slot = 4 + 8 * Int(usedIndex & (size - 1))
        store(UInt32(head), used, slot)
        store(length, used, slot + 4)
        // The element must be visible before the index that publishes it.
        atomicMemoryFence(ordering: .releasing)
        usedIndex &+= 1
        store(usedIndex, used, 2)
    }

    /// Whether the driver wants a used-buffer notification for the entries added since the last call:
    /// with EVENT_IDX when used.idx has passed the driver's used_event, otherwise unless it set NO_INTERRUPT.
    public mutating func needsNotification() -> Bool {
        // used.idx must be visible before the driver's suppression fields are read.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let old = signalledUsedIndex
        signalledUsedIndex = usedIndex
        if usesEventIndex {
            let usedEvent = load(UInt16.self, available, 4 + 2 * Int(size))
            return Self.needsEvent(eventIndex: usedEvent, newIndex: usedIndex, oldIndex: old)
        }
        return old != usedIndex && load(UInt16.self, available, 0) & Self.noInterruptFlag == 0
    }

    /// vring_need_event: whether moving an index from `oldIndex` to `newIndex` crosses `eventIndex`, i.e.
    /// `eventIndex` lies in `[oldIndex, newIndex)` modulo 2^16.
    public static func needsEvent(eventIndex: UInt16, newIndex: UInt16, oldIndex: UInt16) -> Bool {
        newIndex &- eventIndex &- 1 < newIndex &- oldIndex
    }

    /// Asks the driver not to notify the device of new available buffers (a hint the driver may ignore).
    /// With EVENT_IDX nothing is written: avail_event stays behind and the driver stops notifying.
    public func disableNotifications() {
        if !usesEventIndex { store(Self.noNotifyFlag, used, 0) }
    }

    /// Asks the driver to notify the device of new available buffers again, then returns whether buffers
    /// arrived meanwhile, in which case the device must keep draining rather than wait.
    public func enableNotifications() -> Bool {
        if usesEventIndex {
            setAvailEvent(lastAvailableIndex)
        } else {
            store(UInt16(0), used, 0)
        }
        // The request must be visible before avail.idx is read again, or a buffer added in between is missed.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return load(UInt16.self, available, 2) != lastAvailableIndex
    }

    /// Writes avail_event: the driver notifies once avail.idx moves past `index`. Only with EVENT_IDX.
    public func setAvailEvent(_ index: UInt16) {
        precondition(usesEventIndex, "avail_event exists only with VIRTIO_F_EVENT_IDX")
        store(index, used, 4 + 8 * Int(size))
    }

    @inline(__always)
    private func load<T: FixedWidthInteger>(_: T.Type, _ base: UnsafeMutableRawPointer, _ offset: Int) -> T {
        T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// Writes into the used ring (the only ring the device writes) and records the write.
    @inline(__always)
    private func store<T: FixedWidthInteger>(_ value: T, _ base: UnsafeMutableRawPointer, _ offset: Int) {
        base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        memory.noteWritten(at: usedRingAddress + UInt64(offset), length: UInt64(MemoryLayout<T>.size))
    }
}

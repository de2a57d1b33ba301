import GuestMemory
import Virtio

/// One guest buffer of a descriptor chain, as a driver describes it.
public struct ChainBuffer: Sendable {
    public var address: UInt64
    public var length: UInt32
    /// The device writes the buffer (VIRTQ_DESC_F_WRITE).
    public var isWrite: Bool

    public init(address: UInt64, length: UInt32, isWrite: Bool) {
        self.address = address
        self.length = length
        self.isWrite = isWrite
    }
}

/// Descriptor flags as a driver writes them (VIRTIO 1.2 §2.7.5).
public enum DescriptorFlag {
    public static let next: UInt16 = 1
    public static let write: UInt16 = 2
    public static let indirect: UInt16 = 4
}

/// The driver's side of one split virtqueue in guest memory: writes descriptors, publishes chains and reads
/// the used ring, as a guest's driver would. Every test that feeds a device goes through this one writer.
public struct DriverRing {
    public let memory: GuestMemory
    public let size: UInt16
    public let descriptorTable: UInt64
    public let availableRing: UInt64
    public let usedRing: UInt64
    /// The features the driver acknowledged, which decide the ring's layout and notification rules.
    public let features: VirtioFeatures
    /// The driver's avail.idx.
    public private(set) var availableIndex: UInt16 = 0
    /// The next descriptor `publish(_:)` writes a chain at.
    public private(set) var nextDescriptor: UInt16 = 0
    /// The used index up to which `takeUsed()` has read.
    public private(set) var lastUsed: UInt16 = 0

    public init(
        memory: GuestMemory, size: UInt16, descriptorTable: UInt64, availableRing: UInt64, usedRing: UInt64,
        features: VirtioFeatures = [.version1]
    ) {
        self.memory = memory
        self.features = features
        self.size = size
        self.descriptorTable = descriptorTable
        self.availableRing = availableRing
        self.usedRing = usedRing
    }

    /// The device's view of this ring, with the driver's features unless `features` says otherwise.
    public func queue(features: VirtioFeatures? = nil) throws -> SplitQueue {
        try SplitQueue(
            memory: memory, size: size, descriptorTable: descriptorTable, availableRing: availableRing,
            usedRing: usedRing, features: features ?? self.features)
    }

    /// Zeroes the three rings and forgets every index, as a driver does after a device reset.
    public mutating func reset() throws {
        for (base, length) in [(descriptorTable, 16 * Int(size)), (availableRing, 6 + 2 * Int(size)), (usedRing, 6 + 8 * Int(size))] {
            try memory.zero(at: base, length: UInt64(length))
        }
        availableIndex = 0
        nextDescriptor = 0
        lastUsed = 0
    }

    /// Writes one 16-byte descriptor into the table at `table` (this ring's table by default).
    public func setDescriptor(
        _ index: Int, address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0, table: UInt64? = nil
    ) throws {
        let at = (table ?? descriptorTable) + 16 * UInt64(index)
        try memory.store(address, at: at)
        try memory.store(length, at: at + 8)
        try memory.store(flags, at: at + 12)
        try memory.store(next, at: at + 14)
    }

    /// Writes `buffers` as one chain of consecutive descriptors from `head` (wrapping at the ring's size), or,
    /// with `indirectTable`, as an indirect table there that descriptor `head` points at.
    public func writeChain(_ buffers: [ChainBuffer], head: UInt16, indirectTable: UInt64? = nil) throws {
        func flags(_ buffer: ChainBuffer, last: Bool) -> UInt16 {
            (last ? 0 : DescriptorFlag.next) | (buffer.isWrite ? DescriptorFlag.write : 0)
        }
        if let indirectTable {
            for (index, buffer) in buffers.enumerated() {
                let last = index == buffers.count - 1
                try setDescriptor(
                    index, address: buffer.address, length: buffer.length, flags: flags(buffer, last: last),
                    next: last ? 0 : UInt16(index + 1), table: indirectTable)
            }
            try setDescriptor(
                Int(head), address: indirectTable, length: UInt32(16 * buffers.count), flags: DescriptorFlag.indirect)
            return
        }
        for (offset, buffer) in buffers.enumerated() {
            let index = (head &+ UInt16(offset)) % size
            let last = offset == buffers.count - 1
            try setDescriptor(
                Int(index), address: buffer.address, length: buffer.length, flags: flags(buffer, last: last),
                next: last ? 0 : (index + 1) % size)
        }
    }

    /// Writes `buffers` as a chain at the next free descriptors and makes it available; returns its head.
    @discardableResult
    public mutating func publish(_ buffers: [ChainBuffer], indirectTable: UInt64? = nil) throws -> UInt16 {
        let head = nextDescriptor
        try writeChain(buffers, head: head, indirectTable: indirectTable)
        nextDescriptor = (head &+ UInt16(indirectTable == nil ? buffers.count : 1)) % size
        try makeAvailable(head)
        return head
    }

    /// Puts `head` in the next available slot and bumps avail.idx.
    public mutating func makeAvailable(_ head: UInt16) throws {
        try memory.store(head, at: availableRing + 4 + 2 * UInt64(availableIndex % size))
        availableIndex &+= 1
        try memory.store(availableIndex, at: availableRing + 2)
    }

    /// Takes up avail.idx and used.idx as guest memory holds them, as a driver returning to a ring it set up.
    public mutating func adoptIndices() throws {
        availableIndex = try memory.load(at: availableRing + 2)
        lastUsed = try usedIndex()
    }

    /// Overwrites avail.idx.
    public mutating func setAvailableIndex(_ index: UInt16) throws {
        availableIndex = index
        try memory.store(index, at: availableRing + 2)
    }

    public func setAvailableFlags(_ flags: UInt16) throws { try memory.store(flags, at: availableRing) }
    /// used_event: the used index after which the driver wants an interrupt.
    public func setUsedEvent(_ index: UInt16) throws { try memory.store(index, at: availableRing + 4 + 2 * UInt64(size)) }
    public func usedFlags() throws -> UInt16 { try memory.load(at: usedRing) }
    public func usedIndex() throws -> UInt16 { try memory.load(at: usedRing + 2) }
    /// avail_event: the available index after which the device wants a notification.
    public func availEvent() throws -> UInt16 { try memory.load(at: usedRing + 4 + 8 * UInt64(size)) }

    /// The used element in used-ring slot `slot` (taken modulo the ring's size).
    public func usedElement(_ slot: Int) throws -> (id: UInt32, length: UInt32) {
        let at = usedRing + 4 + 8 * UInt64(slot % Int(size))
        return (try memory.load(at: at), try memory.load(at: at + 4))
    }

    /// The used elements added since the last call.
    public mutating func takeUsed() throws -> [(head: UInt16, length: UInt32)] {
        let index = try usedIndex()
        var elements: [(head: UInt16, length: UInt32)] = []
        while lastUsed != index {
            let element = try usedElement(Int(lastUsed))
            elements.append((UInt16(truncatingIfNeeded: element.id), element.length))
            lastUsed &+= 1
        }
        return elements
    }
}

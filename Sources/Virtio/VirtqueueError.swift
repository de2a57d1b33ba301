/// Which part of a split virtqueue a ring error concerns.
public enum VirtqueueRing: Sendable, Equatable, CustomStringConvertible {
    case descriptorTable, availableRing, usedRing

    public var description: String {
        switch self {
        case .descriptorTable: return "descriptor table"
        case .availableRing: return "available ring"
        case .usedRing: return "used ring"
        }
    }
}

/// A descriptor's place: its index in the queue's descriptor table or in an indirect table.
public struct DescriptorLocation: Sendable, Equatable, CustomStringConvertible {
    /// Index in the table the descriptor sits in.
    public let index: UInt16
    /// Whether that table is an indirect table rather than the queue's own.
    public let isIndirect: Bool

    public init(index: UInt16, isIndirect: Bool) {
        self.index = index
        self.isIndirect = isIndirect
    }

    public var description: String { isIndirect ? "indirect descriptor \(index)" : "descriptor \(index)" }
}

/// A driver's violation of the split virtqueue rules. Guest memory is hostile input: every such violation
/// is reported, never trusted; the device then sets DEVICE_NEEDS_RESET.
public enum VirtqueueError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The queue size is zero, not a power of two, or above 32768.
    case invalidQueueSize(UInt16)
    /// A ring address lacks the alignment the specification requires.
    case misalignedRing(VirtqueueRing, address: UInt64, alignment: UInt64)
    /// A ring does not lie inside one guest RAM region.
    case ringOutsideRAM(VirtqueueRing, address: UInt64, length: UInt64)
    /// The used ring, which the device writes, overlaps another ring.
    case overlappingRings(VirtqueueRing, VirtqueueRing)
    /// avail.idx moved more than the queue size past the last entry the device consumed.
    case availableIndexJump(lastSeen: UInt16, available: UInt16, size: UInt16)
    /// The available ring named a head descriptor outside the table.
    case headOutOfRange(head: UInt16, size: UInt16)
    /// A NEXT link points outside its table.
    case nextOutOfRange(DescriptorLocation, next: UInt16, tableSize: UInt16)
    /// A buffer does not lie inside one guest RAM region.
    case bufferOutsideRAM(DescriptorLocation, address: UInt64, length: UInt32)
    /// The chain has more descriptors than the queue size, which includes every loop.
    case chainTooLong(head: UInt16, limit: UInt16)
    /// The chain's buffers add up to more than 4 GiB.
    case chainTooLarge(head: UInt16)
    /// A device-readable descriptor follows a device-writable one.
    case readableAfterWritable(DescriptorLocation)
    /// An indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not negotiated.
    case indirectNotNegotiated(DescriptorLocation)
    /// An indirect descriptor inside an indirect table.
    case nestedIndirect(DescriptorLocation)
    /// An indirect descriptor that also has NEXT set.
    case indirectWithNext(DescriptorLocation)
    /// An indirect table length that is zero, not a multiple of 16, or over the queue size in entries.
    case invalidIndirectLength(DescriptorLocation, length: UInt32)
    /// An indirect table that does not lie inside one guest RAM region.
    case indirectTableOutsideRAM(DescriptorLocation, address: UInt64, length: UInt32)

    public var description: String {
        switch self {
        case .invalidQueueSize(let size):
            return "queue size \(size) is not a power of two between 1 and 32768"
        case .misalignedRing(let ring, let address, let alignment):
            return "\(ring) address \(hex(address)) is not \(alignment)-byte aligned"
        case .ringOutsideRAM(let ring, let address, let length):
            return "\(ring) \(hex(address)) + \(hex(length)) is outside guest RAM"
        case .overlappingRings(let first, let second):
            return "\(first) overlaps the \(second)"
        case .availableIndexJump(let lastSeen, let available, let size):
            return "avail.idx \(available) is more than the queue size \(size) ahead of the last index seen, \(lastSeen)"
        case .headOutOfRange(let head, let size):
            return "available ring names head descriptor \(head), outside a table of \(size)"
        case .nextOutOfRange(let location, let next, let tableSize):
            return "\(location): next \(next) is outside a table of \(tableSize)"
        case .bufferOutsideRAM(let location, let address, let length):
            return "\(location): address \(hex(address)) + \(hex(UInt64(length))) is outside guest RAM"
        case .chainTooLong(let head, let limit):
            return "chain from head \(head) is longer than \(limit) descriptors (a loop?)"
        case .chainTooLarge(let head):
            return "chain from head \(head) describes more than 4 GiB"
        case .readableAfterWritable(let location):
            return "\(location): device-readable descriptor after a device-writable one"
        case .indirectNotNegotiated(let location):
            return "\(location): indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not negotiated"
        case .nestedIndirect(let location):
            return "\(location): indirect descriptor inside an indirect table"
        case .indirectWithNext(let location):
            return "\(location): indirect descriptor with NEXT set"
        case .invalidIndirectLength(let location, let length):
            return "\(location): indirect table length \(hex(UInt64(length))) is not a non-zero multiple of 16 within the queue size"
        case .indirectTableOutsideRAM(let location, let address, let length):
            return "\(location): indirect table \(hex(address)) + \(hex(UInt64(length))) is outside guest RAM"
        }
    }
}

private func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

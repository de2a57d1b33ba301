/// Memory statistics a balloon driver reports on the stats queue (VIRTIO 1.2 §5.5.6.3): each entry is a le16 tag
/// and a le64 value. Fields the driver did not report are nil; amounts are bytes, the others counts.
public struct BalloonStatistics: Sendable, Equatable {
    /// The tags Tern knows; entries with other tags are ignored, as the specification asks.
    public enum Tag: UInt16, Sendable, CaseIterable {
        case swapIn = 0, swapOut, majorFaults, minorFaults, freeMemory, totalMemory, availableMemory, diskCaches
        case hugePageAllocations, hugePageFailures, oomKills
    }

    /// Bytes of one entry.
    public static let entrySize = 10

    /// Bytes swapped in.
    public var swapIn: UInt64?
    /// Bytes swapped out.
    public var swapOut: UInt64?
    /// Major page faults.
    public var majorFaults: UInt64?
    /// Minor page faults.
    public var minorFaults: UInt64?
    /// Bytes of memory not used at all.
    public var freeMemory: UInt64?
    /// Bytes of memory the guest has.
    public var totalMemory: UInt64?
    /// Bytes the guest could use without swapping (MemAvailable).
    public var availableMemory: UInt64?
    /// Bytes of disk caches.
    public var diskCaches: UInt64?
    /// Successful huge page allocations.
    public var hugePageAllocations: UInt64?
    /// Failed huge page allocations.
    public var hugePageFailures: UInt64?
    /// OOM killer invocations.
    public var oomKills: UInt64?

    public init() {}

    /// The value reported for `tag`.
    public subscript(tag: Tag) -> UInt64? {
        get {
            switch tag {
            case .swapIn: return swapIn
            case .swapOut: return swapOut
            case .majorFaults: return majorFaults
            case .minorFaults: return minorFaults
            case .freeMemory: return freeMemory
            case .totalMemory: return totalMemory
            case .availableMemory: return availableMemory
            case .diskCaches: return diskCaches
            case .hugePageAllocations: return hugePageAllocations
            case .hugePageFailures: return hugePageFailures
            case .oomKills: return oomKills
            }
        }
        set {
            switch tag {
            case .swapIn: swapIn = newValue
            case .swapOut: swapOut = newValue
            case .majorFaults: majorFaults = newValue
            case .minorFaults: minorFaults = newValue
            case .freeMemory: freeMemory = newValue
            case .totalMemory: totalMemory = newValue
            case .availableMemory: availableMemory = newValue
            case .diskCaches: diskCaches = newValue
            case .hugePageAllocations: hugePageAllocations = newValue
            case .hugePageFailures: hugePageFailures = newValue
            case .oomKills: oomKills = newValue
            }
        }
    }

    /// Parses whole entries; `bytes.count` must be a multiple of `entrySize`. A tag given twice keeps its last value.
    public init(entries bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count % Self.entrySize == 0, "\(bytes.count) bytes are not whole statistics entries")
        for offset in stride(from: 0, to: bytes.count, by: Self.entrySize) {
            let tag = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            let value = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 2, as: UInt64.self))
            if let known = Tag(rawValue: tag) { self[known] = value }
        }
    }
}

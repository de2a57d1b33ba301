/// A function's MSI-X state (PCI Local Bus 3.0 §6.8.2): the capability's Message Control bits, the vector table
/// and the pending-bit array, delivering through an `MSIXRouting`.
///
/// Table entries take aligned dword or qword accesses; the PBA is read-only. Every entry starts masked. A vector
/// signalled while the function or the vector is masked sets its pending bit instead, and fires when both are
/// unmasked again. While MSI-X is disabled the function does not use it at all: its owner uses INTx instead.
public struct MSIXTable: Sendable {
    /// The MSI-X capability ID.
    public static let capabilityID: UInt8 = 0x11
    /// Message Control bit 15: MSI-X Enable.
    public static let enableBit: UInt16 = 1 << 15
    /// Message Control bit 14: Function Mask.
    public static let functionMaskBit: UInt16 = 1 << 14
    /// The most vectors a table holds.
    public static let maximumVectors = 2048
    /// Bytes per table entry: message address (low, high), message data, vector control.
    public static let entrySize = 16

    private struct Entry {
        var address: UInt64 = 0
        var data: UInt32 = 0
        var masked = true
    }

    /// A vector's route as last reported to the routing; all disabled routes are alike.
    private struct Route: Equatable {
        var address: UInt64 = 0
        var data: UInt32 = 0
        var enabled = false

        static func == (lhs: Route, rhs: Route) -> Bool {
            lhs.enabled == rhs.enabled && (!lhs.enabled || lhs.address == rhs.address && lhs.data == rhs.data)
        }
    }

    /// Number of vectors.
    public let vectorCount: Int
    private let routing: any MSIXRouting
    private var entries: [Entry]
    private var reported: [Route]
    private var pending: [UInt64]
    /// MSI-X Enable, as the guest last wrote it.
    public private(set) var isEnabled = false
    /// Function Mask, as the guest last wrote it.
    public private(set) var isFunctionMasked = false

    /// A table of `vectorCount` (1–2048) masked vectors delivering through `routing`.
    public init(vectorCount: Int, routing: any MSIXRouting) {
        precondition((1...Self.maximumVectors).contains(vectorCount), "MSI-X tables hold 1 to 2048 vectors")
        self.vectorCount = vectorCount
        self.routing = routing
        entries = Array(repeating: Entry(), count: vectorCount)
        reported = Array(repeating: Route(), count: vectorCount)
        pending = Array(repeating: 0, count: (vectorCount + 63) / 64)
    }

    /// Bytes the vector table of `vectorCount` vectors occupies in its BAR.
    public static func tableSize(vectorCount: Int) -> Int { entrySize * vectorCount }
    /// Bytes the pending-bit array of `vectorCount` vectors occupies in its BAR: whole qwords.
    public static func pendingArraySize(vectorCount: Int) -> Int { 8 * ((vectorCount + 63) / 64) }

    /// Bytes this table occupies in its BAR.
    public var tableSize: Int { Self.tableSize(vectorCount: vectorCount) }
    /// Bytes this pending-bit array occupies in its BAR.
    public var pendingArraySize: Int { Self.pendingArraySize(vectorCount: vectorCount) }

    /// The capability's bytes after its ID and next pointer — Message Control, Table Offset/BIR, PBA Offset/BIR —
    /// with the write mask that lets the guest change only Enable and Function Mask. Offsets must be 8-byte aligned.
    public func capability(tableBAR: Int, tableOffset: UInt32, pendingBAR: Int, pendingOffset: UInt32)
        -> (body: [UInt8], writableMask: [UInt8])
    {
        precondition(tableOffset % 8 == 0 && pendingOffset % 8 == 0, "MSI-X structures must be qword aligned")
        let body = littleEndianBytes(UInt16(vectorCount - 1)) + littleEndianBytes(tableOffset | UInt32(tableBAR))
            + littleEndianBytes(pendingOffset | UInt32(pendingBAR))
        let mask = [0x00, UInt8(truncatingIfNeeded: (Self.enableBit | Self.functionMaskBit) >> 8)]
        return (body, mask)
    }

    /// Message Control as the guest reads it.
    public var messageControl: UInt16 {
        UInt16(vectorCount - 1) | (isEnabled ? Self.enableBit : 0) | (isFunctionMasked ? Self.functionMaskBit : 0)
    }

    /// Applies a Message Control value the guest wrote: Enable and Function Mask.
    public mutating func setMessageControl(_ value: UInt16) {
        let enabled = value & Self.enableBit != 0
        let masked = value & Self.functionMaskBit != 0
        guard enabled != isEnabled || masked != isFunctionMasked else { return }
        isEnabled = enabled
        isFunctionMasked = masked
        for vector in 0..<vectorCount { synchronise(vector) }
    }

    /// Whether a `width`-byte access at `offset` of a `size`-byte structure is an aligned dword or qword in it.
    private static func isValid(offset: Int, width: Int, size: Int) -> Bool {
        (width == 4 || width == 8) && offset >= 0 && offset % width == 0 && offset + width <= size
    }

    /// The `width`-byte (4 or 8) value at `offset` of the table, or nil for any other access.
    public func readTable(offset: Int, width: Int) -> UInt64? {
        guard Self.isValid(offset: offset, width: width, size: tableSize) else { return nil }
        var value: UInt64 = 0
        for dword in 0..<width / 4 { value |= UInt64(tableDword((offset >> 2) + dword)) << (32 * dword) }
        return value
    }

    private func tableDword(_ index: Int) -> UInt32 {
        let entry = entries[index / 4]
        switch index % 4 {
        case 0: return UInt32(truncatingIfNeeded: entry.address)
        case 1: return UInt32(truncatingIfNeeded: entry.address >> 32)
        case 2: return entry.data
        default: return entry.masked ? 1 : 0
        }
    }

    /// Writes `width` bytes (4 or 8) of `value` at `offset` of the table; returns false, changing nothing, for any
    /// other access.
    public mutating func writeTable(offset: Int, width: Int, value: UInt64) -> Bool {
        guard Self.isValid(offset: offset, width: width, size: tableSize) else { return false }
        for dword in 0..<width / 4 {
            let index = (offset >> 2) + dword
            let part = UInt32(truncatingIfNeeded: value >> (32 * dword))
            switch index % 4 {
            case 0: entries[index / 4].address = entries[index / 4].address & ~0xFFFF_FFFF | UInt64(part & ~3)
            case 1: entries[index / 4].address = entries[index / 4].address & 0xFFFF_FFFF | UInt64(part) << 32
            case 2: entries[index / 4].data = part
            default: entries[index / 4].masked = part & 1 != 0
            }
        }
        synchronise(offset / Self.entrySize)
        return true
    }

    /// The `width`-byte (4 or 8) value at `offset` of the pending-bit array, or nil for any other access.
    public func readPendingBits(offset: Int, width: Int) -> UInt64? {
        guard Self.isValid(offset: offset, width: width, size: pendingArraySize) else { return nil }
        let word = pending[offset / 8]
        return width == 8 ? word : word >> (8 * UInt64(offset % 8)) & 0xFFFF_FFFF
    }

    /// Whether vector `vector`'s pending bit is set.
    public func isPending(_ vector: Int) -> Bool {
        pending[vector / 64] & 1 << UInt64(vector % 64) != 0
    }

    /// Sends vector `vector` (ignored when out of range or while MSI-X is disabled), or marks it pending while the
    /// function or the vector is masked.
    public mutating func signal(vector: Int) {
        guard isEnabled, vector >= 0, vector < vectorCount else { return }
        if isFunctionMasked || entries[vector].masked {
            pending[vector / 64] |= 1 << UInt64(vector % 64)
        } else {
            routing.trigger(vector: vector)
        }
    }

    /// Reports vector `vector`'s route if it changed, and sends it if it may fire with its pending bit set.
    private mutating func synchronise(_ vector: Int) {
        let entry = entries[vector]
        let route = Route(address: entry.address, data: entry.data, enabled: isEnabled && !isFunctionMasked && !entry.masked)
        if route != reported[vector] {
            reported[vector] = route
            routing.update(vector: vector, address: route.address, data: route.data, enabled: route.enabled)
        }
        if route.enabled && isPending(vector) {
            pending[vector / 64] &= ~(1 << UInt64(vector % 64))
            routing.trigger(vector: vector)
        }
    }
}

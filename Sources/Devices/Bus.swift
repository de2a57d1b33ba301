/// A device reachable through port I/O or MMIO. Offsets are relative to the start of the device's registered range.
///
/// Accesses come from vCPU threads, possibly several at once, so implementations protect their own state.
public protocol BusDevice: AnyObject, Sendable {
    /// Fills `data` with the value of the `data.count`-byte register at `offset`.
    func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer)
    /// Handles a write of `data.count` bytes at `offset`.
    func write(offset: UInt64, from data: UnsafeRawBufferPointer)
}

/// Why a device could not be placed on a bus.
public enum BusError: Error, Equatable, CustomStringConvertible {
    case emptyRange(base: UInt64)
    case rangeOverflow(base: UInt64, length: UInt64)
    case overlap(base: UInt64, length: UInt64, existingBase: UInt64, existingLength: UInt64)

    public var description: String {
        switch self {
        case .emptyRange(let base):
            return "bus range at 0x\(String(base, radix: 16)) has zero length"
        case .rangeOverflow(let base, let length):
            return "bus range 0x\(String(base, radix: 16))+0x\(String(length, radix: 16)) wraps past the end of the address space"
        case .overlap(let base, let length, let existingBase, let existingLength):
            return "bus range 0x\(String(base, radix: 16))+0x\(String(length, radix: 16)) overlaps 0x\(String(existingBase, radix: 16))+0x\(String(existingLength, radix: 16))"
        }
    }
}

/// An address space (port I/O or MMIO) mapping disjoint ranges to devices. Lookups are a binary search.
public struct Bus: Sendable {
    struct Entry: Sendable {
        let base: UInt64
        let length: UInt64
        let device: any BusDevice
    }

    private var entries: [Entry] = []

    public init() {}

    /// Number of registered ranges.
    public var count: Int { entries.count }

    /// Places `device` at `[base, base + length)`. Overlapping ranges are rejected.
    public mutating func register(_ device: any BusDevice, base: UInt64, length: UInt64) throws(BusError) {
        guard length > 0 else { throw .emptyRange(base: base) }
        guard base <= UInt64.max - (length - 1) else { throw .rangeOverflow(base: base, length: length) }
        let position = insertionIndex(for: base)
        if position > 0 {
            let previous = entries[position - 1]
            if previous.base + (previous.length - 1) >= base {
                throw .overlap(base: base, length: length, existingBase: previous.base, existingLength: previous.length)
            }
        }
        if position < entries.count {
            let next = entries[position]
            if base + (length - 1) >= next.base {
                throw .overlap(base: base, length: length, existingBase: next.base, existingLength: next.length)
            }
        }
        entries.insert(Entry(base: base, length: length, device: device), at: position)
    }

    /// The first index whose base is greater than or equal to `address`.
    private func insertionIndex(for address: UInt64) -> Int {
        var low = 0
        var high = entries.count
        while low < high {
            let middle = (low + high) / 2
            if entries[middle].base < address { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// The device covering `address` and the offset of `address` inside its range.
    @inline(__always)
    public func resolve(_ address: UInt64) -> (device: any BusDevice, offset: UInt64)? {
        var low = 0
        var high = entries.count
        while low < high {
            let middle = (low + high) / 2
            let entry = entries[middle]
            if address < entry.base {
                high = middle
            } else if address - entry.base >= entry.length {
                low = middle + 1
            } else {
                return (entry.device, address - entry.base)
            }
        }
        return nil
    }

    /// Dispatches a read; returns false (and fills `data` with all ones, as an empty bus does) when no device claims `address`.
    @discardableResult
    @inline(__always)
    public func read(_ address: UInt64, into data: UnsafeMutableRawBufferPointer) -> Bool {
        guard let (device, offset) = resolve(address) else {
            if let base = data.baseAddress { base.initializeMemory(as: UInt8.self, repeating: 0xFF, count: data.count) }
            return false
        }
        device.read(offset: offset, into: data)
        return true
    }

    /// Dispatches a write; returns false when no device claims `address`.
    @discardableResult
    @inline(__always)
    public func write(_ address: UInt64, from data: UnsafeRawBufferPointer) -> Bool {
        guard let (device, offset) = resolve(address) else { return false }
        device.write(offset: offset, from: data)
        return true
    }
}

/// A wire from a device to an interrupt controller input.
public protocol InterruptLine: Sendable {
    /// Drives the line high (asserted) or low.
    func setLevel(_ asserted: Bool)
}

/// Where a console device sends the bytes the guest writes.
public protocol ConsoleOutput: Sendable {
    func write(_ bytes: UnsafeRawBufferPointer)
}

extension Array where Element == UInt8 {
    /// Appends `value` in little-endian byte order, as every ACPI and MP table field is stored.
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    /// Appends the ASCII bytes of `text`, padded with `padding` or truncated to exactly `width` bytes.
    mutating func appendASCII(_ text: String, width: Int, padding: UInt8 = 0x20) {
        let bytes = Array(text.utf8.prefix(width))
        append(contentsOf: bytes)
        append(contentsOf: repeatElement(padding, count: width - bytes.count))
    }

    /// Overwrites the bytes at `offset` with `value` in little-endian order.
    mutating func storeLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        Swift.withUnsafeBytes(of: value.littleEndian) { bytes in
            for (index, byte) in bytes.enumerated() { self[offset + index] = byte }
        }
    }

    /// Sets the byte at `offset` so that the bytes in `range` sum to zero modulo 256.
    mutating func fixChecksum(at offset: Int, over range: Range<Int>) {
        self[offset] = 0
        self[offset] = 0 &- checksumOfBytes(self[range])
    }

    /// Pads with zeros up to the next multiple of `alignment`.
    mutating func pad(toMultipleOf alignment: Int) {
        append(contentsOf: repeatElement(0, count: (alignment - count % alignment) % alignment))
    }
}

/// The 8-bit sum of `bytes`; a table is valid when the sum over it is zero.
func checksumOfBytes<C: Collection>(_ bytes: C) -> UInt8 where C.Element == UInt8 {
    bytes.reduce(0, &+)
}

/// The little-endian bytes of `value` (public: the firmware's fw_cfg items and loader commands use it too).
public func littleEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.appendLittleEndian(value)
    return bytes
}

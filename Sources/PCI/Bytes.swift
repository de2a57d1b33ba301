/// The little-endian value of up to 4 bytes.
func littleEndianValue(_ data: UnsafeRawBufferPointer) -> UInt32 {
    var value: UInt32 = 0
    for (index, byte) in data.prefix(4).enumerated() { value |= UInt32(byte) << (8 * index) }
    return value
}

/// The little-endian bytes of `value`.
func littleEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    (0..<T.bitWidth / 8).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
}

/// Fills `data` with all ones, what a read nothing answers returns.
func fillAllOnes(_ data: UnsafeMutableRawBufferPointer) {
    for index in data.indices { data[index] = 0xFF }
}

// Shared by the fuzz targets that read their input as a program of operations (ahci, fw-cfg): compiled into each
// target next to its main.swift.

/// Reads the input front to back as little-endian integers; runs out as zeros.
struct Program {
    let bytes: UnsafeRawBufferPointer
    var position = 0

    var done: Bool { position >= bytes.count }

    mutating func next<T: FixedWidthInteger>(_: T.Type = T.self) -> T {
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size {
            let byte = position < bytes.count ? bytes[position] : 0
            position += 1
            value |= T(byte) << (8 * index)
        }
        return value
    }
}

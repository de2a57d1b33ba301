/// Appends little-endian fields to a record's bytes.
public struct StateWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func write<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    public mutating func write(_ value: Bool) { write(UInt8(value ? 1 : 0)) }

    /// A length-prefixed byte string.
    public mutating func write(_ data: [UInt8]) {
        write(UInt64(data.count))
        bytes.append(contentsOf: data)
    }

    /// A length-prefixed UTF-8 string.
    public mutating func write(_ text: String) { write(Array(text.utf8)) }

    /// Bytes with no length prefix, for fixed-size fields.
    public mutating func writeRaw(_ data: [UInt8]) { bytes.append(contentsOf: data) }
}

/// Reads the fields a `StateWriter` wrote, bounds-checked: running past the end throws, never traps.
public struct StateReader: Sendable {
    let bytes: [UInt8]
    /// What is being read, for error messages.
    let context: String
    public private(set) var position = 0

    public init(_ bytes: [UInt8], context: String) {
        self.bytes = bytes
        self.context = context
    }

    public var remaining: Int { bytes.count - position }
    public var isAtEnd: Bool { position == bytes.count }

    public mutating func read<T: FixedWidthInteger>(_ type: T.Type = T.self) throws(StateError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw .truncated("\(context) ends inside a \(size)-byte field at offset \(position)") }
        var value = T.zero
        for index in 0..<size { value |= T(bytes[position + index]) << (8 * index) }
        position += size
        return value
    }

    public mutating func readBool() throws(StateError) -> Bool {
        let value: UInt8 = try read()
        guard value <= 1 else { throw .malformed("\(context): \(value) at offset \(position - 1) is not a boolean") }
        return value == 1
    }

    /// A length-prefixed byte string of at most `limit` bytes.
    public mutating func readBytes(limit: Int = Int(Int32.max)) throws(StateError) -> [UInt8] {
        let length: UInt64 = try read()
        guard length <= UInt64(limit) else {
            throw .malformed("\(context): a field of \(length) bytes at offset \(position - 8) exceeds its limit of \(limit)")
        }
        return try readRaw(count: Int(length))
    }

    /// A length-prefixed UTF-8 string of at most `limit` bytes.
    public mutating func readString(limit: Int = 1 << 20) throws(StateError) -> String {
        let data = try readBytes(limit: limit)
        guard let text = String(validating: data, as: UTF8.self) else {
            throw .malformed("\(context): a string at offset \(position - data.count) is not UTF-8")
        }
        return text
    }

    /// `count` bytes with no length prefix.
    public mutating func readRaw(count: Int) throws(StateError) -> [UInt8] {
        guard count >= 0, remaining >= count else {
            throw .truncated("\(context) holds \(remaining) bytes at offset \(position), \(count) needed")
        }
        defer { position += count }
        return Array(bytes[position..<position + count])
    }

    /// A count of items that each take at least `minimumItemSize` bytes, checked against what is left, so that a
    /// hostile count cannot make the reader reserve memory for items that are not there.
    public mutating func readCount(minimumItemSize: Int) throws(StateError) -> Int {
        let count: UInt64 = try read()
        guard count <= UInt64(remaining / max(minimumItemSize, 1)) else {
            throw .truncated("\(context) announces \(count) items at offset \(position - 8) but holds \(remaining) bytes")
        }
        return Int(count)
    }

    /// Fails unless every byte was read.
    public func finish() throws(StateError) {
        guard isAtEnd else { throw .malformed("\(context) has \(remaining) unread bytes at offset \(position)") }
    }
}

/// Builds small ELF64 images in memory for parser tests.
public struct ELFBuilder {
    public init() {}

    public var machine: UInt16 = 62
    public var type: UInt16 = 2
    public var entry: UInt64 = 0x10_0000
    public var segments: [(physical: UInt64, payload: [UInt8], memorySize: UInt64)] = [(0x10_0000, [0x90, 0x90, 0xF4], 0x1000)]
    public var note: [UInt8]? = ELFBuilder.pvhNote(entry: 0x10_0000)

    public static func pvhNote(entry: UInt32, descriptorSize: Int = 4) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.append(le32: 4)
        bytes.append(le32: UInt32(descriptorSize))
        bytes.append(le32: 18)
        bytes.append(contentsOf: Array("Xen\0".utf8))
        if descriptorSize == 8 { bytes.append(le64: UInt64(entry)) } else { bytes.append(le32: entry) }
        return bytes
    }

    public func build() -> [UInt8] {
        let headerCount = segments.count + (note == nil ? 0 : 1)
        var data: [UInt8] = []
        var offsets: [UInt64] = []
        var dataOffset = UInt64(64 + 56 * headerCount)
        for segment in segments {
            offsets.append(dataOffset)
            data.append(contentsOf: segment.payload)
            dataOffset += UInt64(segment.payload.count)
        }
        let noteOffset = dataOffset
        if let note { data.append(contentsOf: note) }

        var bytes: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        bytes.append(le16: type)
        bytes.append(le16: machine)
        bytes.append(le32: 1)
        bytes.append(le64: entry)
        bytes.append(le64: 64)  // e_phoff
        bytes.append(le64: 0)  // e_shoff
        bytes.append(le32: 0)  // e_flags
        bytes.append(le16: 64)
        bytes.append(le16: 56)
        bytes.append(le16: UInt16(headerCount))
        bytes.append(le16: 64)
        bytes.append(le16: 0)
        bytes.append(le16: 0)
        for (index, segment) in segments.enumerated() {
            bytes.append(le32: 1)
            bytes.append(le32: 7)
            bytes.append(le64: offsets[index])
            bytes.append(le64: segment.physical)
            bytes.append(le64: segment.physical)
            bytes.append(le64: UInt64(segment.payload.count))
            bytes.append(le64: segment.memorySize)
            bytes.append(le64: 0x1000)
        }
        if let note {
            bytes.append(le32: 4)
            bytes.append(le32: 4)
            bytes.append(le64: noteOffset)
            bytes.append(le64: 0)
            bytes.append(le64: 0)
            bytes.append(le64: UInt64(note.count))
            bytes.append(le64: UInt64(note.count))
            bytes.append(le64: 4)
        }
        return bytes + data
    }
}

extension Array where Element == UInt8 {
    public mutating func append(le16 value: UInt16) { Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) } }
    public mutating func append(le32 value: UInt32) { Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) } }
    public mutating func append(le64 value: UInt64) { Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) } }
}

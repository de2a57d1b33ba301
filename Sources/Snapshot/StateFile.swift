/// A four-character section tag, such as "VCPU".
public struct SectionTag: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32

    public init(_ text: StaticString) {
        precondition(text.utf8CodeUnitCount == 4, "a section tag has four characters")
        var value: UInt32 = 0
        for index in 0..<4 { value |= UInt32(text.utf8Start[index]) << (8 * index) }
        rawValue = value
    }

    init(rawValue: UInt32) { self.rawValue = rawValue }

    public var description: String {
        String(decoding: (0..<4).map { UInt8(truncatingIfNeeded: rawValue >> (8 * $0)) }, as: UTF8.self)
    }
}

/// A part of a VM's state that can be written as a versioned record and read back.
public protocol StateRecord: Sendable {
    /// The section tag records of this type are stored under.
    static var tag: SectionTag { get }
    /// The version `encode` writes; `decode` reads it and any older version it still supports.
    static var version: UInt32 { get }
    func encode(into writer: inout StateWriter)
    static func decode(from reader: inout StateReader, version: UInt32) throws(StateError) -> Self
}

/// One record in a state file: its tag, version, the instance it describes (a vCPU index, a device ID) and its bytes.
public struct StateSection: Sendable, Equatable {
    public var tag: SectionTag
    public var version: UInt32
    public var instance: UInt32
    public var payload: [UInt8]

    public init(tag: SectionTag, version: UInt32, instance: UInt32, payload: [UInt8]) {
        self.tag = tag
        self.version = version
        self.instance = instance
        self.payload = payload
    }
}

/// The state of a VM as one self-checking byte string: a 32-byte header (magic "TERNSTAT", format version, payload
/// length, CRC-32C of the payload) followed by sections (tag, record version, instance, length, payload). Guest
/// memory is not part of it; see docs/state-format.md.
public struct StateFile: Sendable, Equatable {
    public static let formatVersion: UInt32 = 1
    static let magic: [UInt8] = Array("TERNSTAT".utf8)
    static let headerSize = 32
    static let sectionHeaderSize = 20
    /// No state file is larger; anything claiming more is refused before it is read.
    public static let maximumPayload: UInt64 = 1 << 30

    public private(set) var sections: [StateSection] = []

    public init() {}

    /// Adds `record` as the state of `instance`.
    public mutating func append<Record: StateRecord>(_ record: Record, instance: UInt32 = 0) {
        var writer = StateWriter()
        record.encode(into: &writer)
        sections.append(StateSection(tag: Record.tag, version: Record.version, instance: instance, payload: writer.bytes))
    }

    /// Adds a section as it is, as a stream that forwards sections it does not interpret does.
    public mutating func append(_ section: StateSection) { sections.append(section) }

    /// Every record of `Record`'s type, with its instance, in the order they were appended.
    public func records<Record: StateRecord>(_ type: Record.Type) throws(StateError) -> [(instance: UInt32, record: Record)] {
        var found: [(instance: UInt32, record: Record)] = []
        for section in sections where section.tag == Record.tag {
            found.append((section.instance, try Self.decode(section, as: type)))
        }
        return found
    }

    /// The record of `Record`'s type for `instance`.
    public func record<Record: StateRecord>(_ type: Record.Type, instance: UInt32 = 0) throws(StateError) -> Record {
        guard let section = sections.first(where: { $0.tag == Record.tag && $0.instance == instance }) else {
            throw .missingRecord(tag: Record.tag.description, instance: instance)
        }
        return try Self.decode(section, as: type)
    }

    private static func decode<Record: StateRecord>(_ section: StateSection, as type: Record.Type) throws(StateError) -> Record {
        guard section.version <= Record.version else {
            throw .unsupportedRecordVersion(tag: Record.tag.description, version: section.version)
        }
        var reader = StateReader(section.payload, context: "\(Record.tag) record \(section.instance)")
        let record = try Record.decode(from: &reader, version: section.version)
        try reader.finish()
        return record
    }

    /// The file's bytes.
    public func encoded() -> [UInt8] {
        var body = StateWriter()
        for section in sections {
            body.write(section.tag.rawValue)
            body.write(section.version)
            body.write(section.instance)
            body.write(UInt64(section.payload.count))
            body.writeRaw(section.payload)
        }
        var header = StateWriter()
        header.writeRaw(Self.magic)
        header.write(Self.formatVersion)
        header.write(UInt32(sections.count))
        header.write(UInt64(body.bytes.count))
        header.write(CRC32C.checksum(body.bytes))
        header.write(UInt32(0))
        return header.bytes + body.bytes
    }

    /// Reads a state file, checking its magic, format version, length and checksum before any section.
    public init(decoding bytes: [UInt8]) throws(StateError) {
        guard bytes.count >= Self.magic.count, Array(bytes.prefix(Self.magic.count)) == Self.magic else {
            throw .notAStateFile
        }
        var header = StateReader(bytes, context: "the state header")
        _ = try header.readRaw(count: Self.magic.count)
        let version: UInt32 = try header.read()
        guard version <= Self.formatVersion, version > 0 else { throw .unsupportedFormatVersion(version) }
        let sectionCount: UInt32 = try header.read()
        let length: UInt64 = try header.read()
        let checksum: UInt32 = try header.read()
        _ = try header.read(UInt32.self)
        guard length <= Self.maximumPayload else { throw .malformed("a payload of \(length) bytes is larger than any state") }
        guard UInt64(header.remaining) >= length else {
            throw .truncated("the header announces \(length) bytes of sections, the file holds \(header.remaining)")
        }
        let body = try header.readRaw(count: Int(length))
        let actual = CRC32C.checksum(body)
        guard actual == checksum else { throw .checksumMismatch(expected: checksum, actual: actual) }
        var reader = StateReader(body, context: "the state's sections")
        guard UInt64(sectionCount) <= UInt64(body.count / Self.sectionHeaderSize) else {
            throw .malformed("\(sectionCount) sections cannot fit in \(body.count) bytes")
        }
        for _ in 0..<sectionCount {
            let tag = SectionTag(rawValue: try reader.read())
            let recordVersion: UInt32 = try reader.read()
            let instance: UInt32 = try reader.read()
            let size: UInt64 = try reader.read()
            guard size <= UInt64(reader.remaining) else {
                throw .truncated("section \(tag) \(instance) announces \(size) bytes, \(reader.remaining) remain")
            }
            sections.append(StateSection(tag: tag, version: recordVersion, instance: instance, payload: try reader.readRaw(count: Int(size))))
        }
        try reader.finish()
    }
}

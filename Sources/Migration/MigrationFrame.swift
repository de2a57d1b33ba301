/// The kinds of frame in a migration stream (docs/migration.md).
public enum FrameKind: UInt8, Sendable {
    /// Source → destination, first: the stream version, the VM's configuration and its memory layout.
    case hello = 1
    /// Destination → source: the destination built an empty VM for the configuration and waits for memory.
    case ready = 2
    /// Source → destination: a batch of guest pages.
    case pages = 3
    /// Source → destination: the end of one pass over memory.
    case endOfRound = 4
    /// Source → destination, once the source is paused: the state of every vCPU and device (a state file).
    case state = 5
    /// Destination → source: the destination holds the whole VM and will resume it; the source may exit.
    case accepted = 6
    /// Either way: the sender gives up, with a reason; the receiver stops and the source resumes.
    case abort = 7
}

/// A frame header: kind (1 byte), three zero bytes, payload length (4 bytes, little-endian).
public struct FrameHeader: Equatable, Sendable {
    public static let size = 8
    /// No payload is larger: a page batch of `PageBatch.maximumPages` pages with its index, or a state file.
    public static let maximumPayload = 64 << 20

    public var kind: FrameKind
    public var length: Int

    public init(kind: FrameKind, length: Int) {
        self.kind = kind
        self.length = length
    }

    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= Self.size)
        bytes.storeBytes(of: kind.rawValue, toByteOffset: 0, as: UInt8.self)
        bytes.storeBytes(of: UInt8(0), toByteOffset: 1, as: UInt8.self)
        bytes.storeBytes(of: UInt16(0), toByteOffset: 2, as: UInt16.self)
        bytes.storeBytes(of: UInt32(length).littleEndian, toByteOffset: 4, as: UInt32.self)
    }

    /// Reads a header, refusing unknown kinds, non-zero reserved bytes and oversized payloads.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(MigrationError) {
        guard bytes.count >= Self.size else { throw .protocolViolation("a frame header of \(bytes.count) bytes") }
        guard let kind = FrameKind(rawValue: bytes[0]) else { throw .protocolViolation("unknown frame kind \(bytes[0])") }
        guard bytes[1] == 0, bytes[2] == 0, bytes[3] == 0 else { throw .protocolViolation("reserved header bytes are not zero") }
        let length = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        guard length <= Self.maximumPayload else {
            throw .protocolViolation("a \(kind) frame of \(length) bytes exceeds \(Self.maximumPayload)")
        }
        self.kind = kind
        self.length = length
    }
}

/// The hello frame's payload: what the destination needs to build an empty VM to receive into.
public struct MigrationHello: Equatable, Sendable {
    /// The stream version this Tern speaks; both sides must speak the same.
    public static let streamVersion: UInt32 = 1
    static let maximumRegions = 64
    static let maximumConfiguration = 1 << 20

    public var version: UInt32
    /// The VM's configuration as the VMM serialises it (JSON).
    public var configuration: [UInt8]
    /// Guest memory, region by region: guest-physical address and size, both page-aligned.
    public var regions: [(guestAddress: UInt64, size: UInt64)]

    public init(version: UInt32 = streamVersion, configuration: [UInt8], regions: [(guestAddress: UInt64, size: UInt64)]) {
        self.version = version
        self.configuration = configuration
        self.regions = regions
    }

    public static func == (lhs: MigrationHello, rhs: MigrationHello) -> Bool {
        lhs.version == rhs.version && lhs.configuration == rhs.configuration
            && lhs.regions.elementsEqual(rhs.regions) { $0.guestAddress == $1.guestAddress && $0.size == $1.size }
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        append(version, to: &bytes)
        append(UInt32(configuration.count), to: &bytes)
        bytes += configuration
        append(UInt32(regions.count), to: &bytes)
        for region in regions {
            append(region.guestAddress, to: &bytes)
            append(region.size, to: &bytes)
        }
        return bytes
    }

    public init(decoding bytes: [UInt8]) throws(MigrationError) {
        var cursor = ByteCursor(bytes)
        version = try cursor.read()
        guard version == Self.streamVersion else { throw .versionMismatch(local: Self.streamVersion, remote: version) }
        let configurationLength = Int(try cursor.read(UInt32.self))
        guard configurationLength <= Self.maximumConfiguration else {
            throw .protocolViolation("a configuration of \(configurationLength) bytes")
        }
        configuration = try cursor.take(configurationLength)
        let count = Int(try cursor.read(UInt32.self))
        guard count > 0, count <= Self.maximumRegions else { throw .protocolViolation("\(count) memory regions") }
        var regions: [(guestAddress: UInt64, size: UInt64)] = []
        var end: UInt64 = 0
        for _ in 0..<count {
            let address: UInt64 = try cursor.read()
            let size: UInt64 = try cursor.read()
            let (regionEnd, overflow) = address.addingReportingOverflow(size)
            guard size > 0, address % PageBatch.pageSize == 0, size % PageBatch.pageSize == 0, !overflow, address >= end else {
                throw .protocolViolation("memory region 0x\(String(address, radix: 16))+0x\(String(size, radix: 16)) is not page-aligned, empty, overlapping or out of order")
            }
            end = regionEnd
            regions.append((address, size))
        }
        guard cursor.isAtEnd else { throw .protocolViolation("\(cursor.remaining) bytes after the hello") }
        self.regions = regions
    }
}

/// Appends `value` little-endian.
func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
}

/// Bounds-checked little-endian reading of a received payload.
struct ByteCursor {
    let bytes: [UInt8]
    var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - position }
    var isAtEnd: Bool { position == bytes.count }

    mutating func read<T: FixedWidthInteger>(_ type: T.Type = T.self) throws(MigrationError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw .protocolViolation("a payload ends inside a field at offset \(position)") }
        var value = T.zero
        for index in 0..<size { value |= T(bytes[position + index]) << (8 * index) }
        position += size
        return value
    }

    mutating func take(_ count: Int) throws(MigrationError) -> [UInt8] {
        guard count >= 0, remaining >= count else { throw .protocolViolation("a payload ends inside \(count) bytes at offset \(position)") }
        defer { position += count }
        return Array(bytes[position..<position + count])
    }
}

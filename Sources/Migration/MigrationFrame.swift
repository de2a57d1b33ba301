import Snapshot

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
        var writer = StateWriter()
        writer.write(version)
        writer.write(UInt32(configuration.count))
        writer.writeRaw(configuration)
        writer.write(UInt32(regions.count))
        for region in regions {
            writer.write(region.guestAddress)
            writer.write(region.size)
        }
        return writer.bytes
    }

    public init(decoding bytes: [UInt8]) throws(MigrationError) {
        var reader = StateReader(bytes, context: "the hello")
        if let remote = try? reader.read(UInt32.self), remote != Self.streamVersion {
            throw .versionMismatch(local: Self.streamVersion, remote: remote)
        }
        do throws(StateError) {
            try self.init(reading: bytes)
        } catch {
            throw .protocolViolation(error.description)
        }
    }

    private init(reading bytes: [UInt8]) throws(StateError) {
        var reader = StateReader(bytes, context: "the hello")
        version = try reader.read()
        let configurationLength = Int(try reader.read(UInt32.self))
        guard configurationLength <= Self.maximumConfiguration else {
            throw .malformed("a configuration of \(configurationLength) bytes")
        }
        configuration = try reader.readRaw(count: configurationLength)
        let count = Int(try reader.read(UInt32.self))
        guard count > 0, count <= Self.maximumRegions else { throw .malformed("\(count) memory regions") }
        var regions: [(guestAddress: UInt64, size: UInt64)] = []
        var end: UInt64 = 0
        for _ in 0..<count {
            let address: UInt64 = try reader.read()
            let size: UInt64 = try reader.read()
            let (regionEnd, overflow) = address.addingReportingOverflow(size)
            guard size > 0, address % PageBatch.pageSize == 0, size % PageBatch.pageSize == 0, !overflow, address >= end else {
                throw .malformed("memory region 0x\(String(address, radix: 16))+0x\(String(size, radix: 16)) is not page-aligned, empty, overlapping or out of order")
            }
            end = regionEnd
            regions.append((address, size))
        }
        try reader.finish()
        self.regions = regions
    }
}

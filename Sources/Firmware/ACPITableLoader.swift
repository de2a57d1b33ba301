import ACPI

/// Hands Tern's ACPI tables to firmware through QEMU's table loader (`etc/table-loader`, QEMU's
/// hw/acpi/bios-linker-loader.c): the firmware allocates the files, patches the pointers between them to the
/// addresses it chose and fixes the checksums, so the guest sees the tables a direct kernel boot gets.
public struct ACPITableLoader: Sendable, Equatable {
    /// File names as QEMU uses them.
    public static let tablesFile = "etc/acpi/tables"
    public static let rsdpFile = "etc/acpi/rsdp"
    public static let loaderFile = "etc/table-loader"

    /// Loader commands; each is `commandLength` bytes, little-endian.
    public enum Command {
        public static let allocate: UInt32 = 1
        public static let addPointer: UInt32 = 2
        public static let addChecksum: UInt32 = 3
    }
    /// Allocation zones: anywhere in high RAM, or the BIOS's F segment (where the RSDP must be found).
    public enum Zone {
        public static let high: UInt8 = 1
        public static let fSegment: UInt8 = 2
    }
    public static let commandLength = 128
    static let nameLength = 56

    /// Every table but the RSDP, with pointers between them as offsets into this file.
    public let tables: [UInt8]
    /// The RSDP, pointing at the XSDT's offset in `tables`.
    public let rsdp: [UInt8]
    /// The commands that allocate both files, add `tables`' address to each pointer and fix the checksums.
    public let commands: [UInt8]

    /// Why the tables cannot be relocated.
    public enum LoaderError: Error, Equatable, CustomStringConvertible {
        case unexpectedLayout(String)

        public var description: String {
            switch self {
            case .unexpectedLayout(let detail): "ACPI tables for the table loader: \(detail)"
            }
        }
    }

    /// Relocates `set`, which must be built at base 0 with the RSDP first: every address in it is then an offset
    /// into its blob, and the pointer fields (the RSDP's XSDT address, the XSDT's entries, the FADT's DSDT and
    /// X_DSDT) are rewritten as offsets into the tables file.
    public init(_ set: ACPITableSet) throws(LoaderError) {
        guard set.baseAddress == 0, let rsdpTable = set.tables.first, rsdpTable.signature == "RSD PTR ",
              set.tables.count >= 2 else {
            throw .unexpectedLayout("the RSDP must come first in a set built at address 0")
        }
        let start = Int(set.tables[1].address)
        guard start >= rsdpTable.length, start <= set.blob.count else { throw .unexpectedLayout("the tables overlap the RSDP") }
        var rsdp = Array(set.blob[0..<rsdpTable.length])
        var tables = Array(set.blob[start...])
        var pointers: [(file: String, offset: Int, size: Int)] = []
        func rebase(_ bytes: inout [UInt8], file: String, at offset: Int, size: Int) throws(LoaderError) {
            guard offset >= 0, offset + size <= bytes.count else { throw .unexpectedLayout("pointer at \(offset) in \(file)") }
            var value: UInt64 = 0
            for index in 0..<size { value |= UInt64(bytes[offset + index]) << (8 * UInt64(index)) }
            guard value >= UInt64(start) else { throw .unexpectedLayout("pointer 0x\(String(value, radix: 16)) below the tables") }
            value -= UInt64(start)
            for index in 0..<size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
            pointers.append((file, offset, size))
        }
        try rebase(&rsdp, file: Self.rsdpFile, at: 24, size: 8)
        var checksums: [(file: String, offset: Int, start: Int, length: Int)] = []
        for table in set.tables.dropFirst() {
            let offset = Int(table.address) - start
            switch table.signature {
            case "XSDT":
                for entry in stride(from: 36, to: table.length, by: 8) {
                    try rebase(&tables, file: Self.tablesFile, at: offset + entry, size: 8)
                }
            case "FACP":
                try rebase(&tables, file: Self.tablesFile, at: offset + 40, size: 4)
                try rebase(&tables, file: Self.tablesFile, at: offset + 140, size: 8)
            default:
                break
            }
            checksums.append((Self.tablesFile, offset + 9, offset, table.length))
        }
        checksums.append((Self.rsdpFile, 8, 0, 20))
        checksums.append((Self.rsdpFile, 32, 0, rsdpTable.length))

        var commands: [UInt8] = []
        commands += Self.allocate(Self.rsdpFile, alignment: 16, zone: Zone.fSegment)
        commands += Self.allocate(Self.tablesFile, alignment: 64, zone: Zone.high)
        for pointer in pointers {
            commands += Self.addPointer(in: pointer.file, to: Self.tablesFile, offset: pointer.offset, size: pointer.size)
        }
        for checksum in checksums {
            commands += Self.addChecksum(in: checksum.file, at: checksum.offset, over: checksum.start..<checksum.start + checksum.length)
        }
        self.tables = tables
        self.rsdp = rsdp
        self.commands = commands
    }

    static func allocate(_ file: String, alignment: UInt32, zone: UInt8) -> [UInt8] {
        var bytes = littleEndianBytes(Command.allocate) + name(file)
        bytes += littleEndianBytes(alignment)
        bytes.append(zone)
        return padded(bytes)
    }

    static func addPointer(in destination: String, to source: String, offset: Int, size: Int) -> [UInt8] {
        var bytes = littleEndianBytes(Command.addPointer) + name(destination) + name(source)
        bytes += littleEndianBytes(UInt32(offset))
        bytes.append(UInt8(size))
        return padded(bytes)
    }

    static func addChecksum(in file: String, at offset: Int, over range: Range<Int>) -> [UInt8] {
        var bytes = littleEndianBytes(Command.addChecksum) + name(file)
        bytes += littleEndianBytes(UInt32(offset))
        bytes += littleEndianBytes(UInt32(range.lowerBound))
        bytes += littleEndianBytes(UInt32(range.count))
        return padded(bytes)
    }

    static func name(_ file: String) -> [UInt8] {
        let bytes = Array(file.utf8.prefix(nameLength - 1))
        return bytes + repeatElement(0, count: nameLength - bytes.count)
    }

    static func padded(_ bytes: [UInt8]) -> [UInt8] {
        bytes + repeatElement(0, count: commandLength - bytes.count)
    }
}

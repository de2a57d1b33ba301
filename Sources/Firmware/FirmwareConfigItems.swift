import ACPI

/// The items a QEMU-compatible fw_cfg device serves (QEMU's docs/specs/fw_cfg.rst): fixed keys below 0x20, named
/// files from 0x20 up, and the file directory that lists those files. Built once before the guest runs.
public struct FirmwareConfigItems: Sendable, Equatable {
    /// Selector keys with a fixed meaning (fw_cfg.rst, "Selector Register").
    public enum Key {
        public static let signature: UInt16 = 0x0000
        public static let id: UInt16 = 0x0001
        public static let uuid: UInt16 = 0x0002
        public static let ramSize: UInt16 = 0x0003
        public static let noGraphic: UInt16 = 0x0004
        public static let cpuCount: UInt16 = 0x0005
        public static let numa: UInt16 = 0x000D
        public static let bootMenu: UInt16 = 0x000E
        public static let maxCPUs: UInt16 = 0x000F
        public static let fileDirectory: UInt16 = 0x0019
        /// The first key given to a named file.
        public static let firstFile: UInt16 = 0x0020
        /// x86 items (QEMU's FW_CFG_ARCH_LOCAL range): ACPI table and SMBIOS entry counts, the IRQ 0 override flag.
        public static let acpiTables: UInt16 = 0x8000
        public static let smbiosEntries: UInt16 = 0x8001
        public static let irq0Override: UInt16 = 0x8002
    }

    /// Bit 0 of the ID item: the port interface; bit 1: the DMA interface.
    public static let idTraditional: UInt32 = 1 << 0
    public static let idDMA: UInt32 = 1 << 1
    /// Longest file name, including its terminating NUL (a directory entry's name field).
    public static let maxNameLength = 56
    /// Bytes of one file directory entry: size, key, reserved, name.
    static let directoryEntryLength = 64

    /// Why an item cannot be added.
    public enum ItemError: Error, Equatable, CustomStringConvertible {
        case nameTooLong(String)
        case duplicateName(String)
        case tooManyFiles
        case tooLarge(String, Int)
        case invalidContent(String)

        public var description: String {
            switch self {
            case .nameTooLong(let name): "fw_cfg file name '\(name)' is longer than \(FirmwareConfigItems.maxNameLength - 1) bytes"
            case .duplicateName(let name): "fw_cfg file '\(name)' is added twice"
            case .tooManyFiles: "fw_cfg holds no more files: the selector keys are used up"
            case .tooLarge(let name, let size): "fw_cfg item '\(name)' of \(size) bytes exceeds the 32-bit size field"
            case .invalidContent(let detail): detail
            }
        }
    }

    /// Content by selector key, the directory included.
    public private(set) var contents: [UInt16: [UInt8]]
    /// A named file and the key that selects it.
    public struct File: Sendable, Equatable {
        public let name: String
        public let key: UInt16
    }

    /// Named files in the order they were added.
    public private(set) var files: [File]

    /// An item set with the signature, the ID (port and DMA interfaces) and an empty file directory.
    public init() {
        contents = [:]
        files = []
        contents[Key.signature] = Array("QEMU".utf8)
        contents[Key.id] = littleEndianBytes(Self.idTraditional | Self.idDMA)
        contents[Key.fileDirectory] = [0, 0, 0, 0]
    }

    /// The bytes behind `key`; keys without an item read as empty.
    public func content(of key: UInt16) -> [UInt8] {
        contents[key] ?? []
    }

    /// Sets the item at a fixed key (one below `Key.firstFile`, or an x86 key).
    public mutating func set(_ key: UInt16, _ bytes: [UInt8]) {
        precondition(key < Key.firstFile || key >= Key.acpiTables, "files are added by name")
        precondition(key != Key.fileDirectory, "the directory follows the files")
        contents[key] = bytes
    }

    /// Sets the item at `key` to `value` in little-endian order, as fw_cfg's numeric items are stored.
    public mutating func set<T: FixedWidthInteger>(_ key: UInt16, integer value: T) {
        set(key, littleEndianBytes(value))
    }

    /// Adds a named file under the next free key and lists it in the directory. Returns its key.
    @discardableResult
    public mutating func addFile(_ name: String, _ bytes: [UInt8]) throws(ItemError) -> UInt16 {
        guard name.utf8.count < Self.maxNameLength, !name.isEmpty else { throw .nameTooLong(name) }
        guard !files.contains(where: { $0.name == name }) else { throw .duplicateName(name) }
        guard bytes.count <= UInt32.max else { throw .tooLarge(name, bytes.count) }
        let key = Key.firstFile + UInt16(files.count)
        guard key < Key.acpiTables else { throw .tooManyFiles }
        files.append(File(name: name, key: key))
        contents[key] = bytes
        contents[Key.fileDirectory] = directory()
        return key
    }

    /// The directory: a big-endian count, then per file a big-endian size, key, reserved word and NUL-padded name.
    func directory() -> [UInt8] {
        var bytes = Self.bigEndian(UInt32(files.count))
        for file in files {
            bytes += Self.bigEndian(UInt32(contents[file.key]?.count ?? 0))
            bytes += Self.bigEndian(file.key)
            bytes += [0, 0]
            var name = Array(file.name.utf8)
            name += repeatElement(0, count: Self.maxNameLength - name.count)
            bytes += name
        }
        return bytes
    }

    static func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian, Array.init)
    }
}

extension FirmwareConfigItems {
    /// The key of the file named `name`, if there is one.
    public func key(of name: String) -> UInt16? {
        files.first { $0.name == name }?.key
    }
}

/// A cpio archive in the "newc" format (magic 070701), the format Linux unpacks as an initramfs.
///
/// Output is deterministic: mtime, uid and gid are 0 and inode numbers follow insertion order, so the same
/// inputs always give the same bytes. Missing parent directories are added (mode 0755) ahead of their children.
public struct CPIOArchive: Sendable, Equatable {
    /// What a member is.
    public enum Entry: Sendable, Equatable {
        /// A directory with permission bits `mode`.
        case directory(mode: UInt32)
        /// A regular file.
        case file(mode: UInt32, contents: [UInt8])
        /// A symbolic link to `target`.
        case symlink(target: String)
        /// A character device node `major:minor`.
        case characterDevice(mode: UInt32, major: UInt32, minor: UInt32)
    }

    /// One member: a path relative to the archive root and what is there.
    public struct Member: Sendable, Equatable {
        public let path: String
        public let entry: Entry
    }

    /// The members in archive order.
    public private(set) var members: [Member] = []
    private var index: [String: Int] = [:]

    public init() {}

    /// Adds `entry` at `path` (a leading "/" is dropped). Re-adding a directory updates its mode; any other
    /// repeated path is an error, as is a path whose parent is not a directory.
    public mutating func add(_ path: String, _ entry: Entry) throws(InitramfsError) {
        let components = path.split(separator: "/", omittingEmptySubsequences: false).drop { $0.isEmpty }
        guard !components.isEmpty else { throw .invalidArchivePath(path, reason: "empty path") }
        for component in components {
            if component.isEmpty || component == "." || component == ".." || component.contains("\0") {
                throw .invalidArchivePath(path, reason: "components must be non-empty names, not '.' or '..'")
            }
        }
        if case .file(_, let contents) = entry, contents.count > Int(UInt32.max) { throw .fileTooLarge(path) }
        var parent = ""
        for component in components.dropLast() {
            parent += parent.isEmpty ? String(component) : "/" + component
            if let at = index[parent] {
                guard case .directory = members[at].entry else {
                    throw .invalidArchivePath(path, reason: "\(parent) is not a directory")
                }
            } else {
                append(parent, .directory(mode: 0o755))
            }
        }
        let name = components.joined(separator: "/")
        if let at = index[name] {
            guard case .directory = members[at].entry, case .directory = entry else {
                throw .invalidArchivePath(path, reason: "already in the archive")
            }
            members[at] = Member(path: name, entry: entry)
        } else {
            append(name, entry)
        }
    }

    private mutating func append(_ path: String, _ entry: Entry) {
        index[path] = members.count
        members.append(Member(path: path, entry: entry))
    }

    private static let headerSize = 110
    private static let trailer = "TRAILER!!!"

    /// The size in bytes of `encoded()`.
    public var encodedSize: Int {
        members.reduce(Self.memberSize(name: Self.trailer, dataSize: 0)) {
            $0 + Self.memberSize(name: $1.path, dataSize: $1.entry.data.count)
        }
    }

    private static func memberSize(name: String, dataSize: Int) -> Int {
        padded(headerSize + name.utf8.count + 1) + padded(dataSize)
    }

    private static func padded(_ n: Int) -> Int { (n + 3) & ~3 }

    /// The archive's bytes, ending with the TRAILER!!! member.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(encodedSize)
        for (number, member) in members.enumerated() {
            let entry = member.entry
            Self.appendMember(
                to: &out, name: member.path, inode: UInt32(number + 1), mode: entry.fileMode,
                links: entry.isDirectory ? 2 : 1, device: entry.device, data: entry.data)
        }
        Self.appendMember(to: &out, name: Self.trailer, inode: 0, mode: 0, links: 1, device: (0, 0), data: [])
        return out
    }

    private static func appendMember(
        to out: inout [UInt8], name: String, inode: UInt32, mode: UInt32, links: UInt32,
        device: (major: UInt32, minor: UInt32), data: [UInt8]
    ) {
        out.append(contentsOf: "070701".utf8)
        let fields: [UInt32] = [
            inode, mode, 0, 0, links, 0, UInt32(data.count), 0, 0, device.major, device.minor,
            UInt32(name.utf8.count + 1), 0,
        ]
        for field in fields { appendHex(field, to: &out) }
        out.append(contentsOf: name.utf8)
        out.append(0)
        pad(&out)
        out.append(contentsOf: data)
        pad(&out)
    }

    private static func appendHex(_ value: UInt32, to out: inout [UInt8]) {
        let digits = Array("0123456789ABCDEF".utf8)
        for shift in stride(from: 28, through: 0, by: -4) { out.append(digits[Int((value >> UInt32(shift)) & 0xF)]) }
    }

    private static func pad(_ out: inout [UInt8]) {
        while out.count % 4 != 0 { out.append(0) }
    }
}

extension CPIOArchive.Entry {
    /// Type and permission bits as stat(2) reports them.
    var fileMode: UInt32 {
        switch self {
        case .directory(let mode): return 0o040000 | (mode & 0o7777)
        case .file(let mode, _): return 0o100000 | (mode & 0o7777)
        case .symlink: return 0o120777
        case .characterDevice(let mode, _, _): return 0o020000 | (mode & 0o7777)
        }
    }

    var isDirectory: Bool {
        if case .directory = self { return true }
        return false
    }

    /// The member's data: file contents, or a symlink's target.
    var data: [UInt8] {
        switch self {
        case .file(_, let contents): return contents
        case .symlink(let target): return Array(target.utf8)
        case .directory, .characterDevice: return []
        }
    }

    var device: (major: UInt32, minor: UInt32) {
        if case .characterDevice(_, let major, let minor) = self { return (major, minor) }
        return (0, 0)
    }
}

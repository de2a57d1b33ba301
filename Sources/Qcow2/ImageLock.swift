#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// How an open uses an image file, and so which of QEMU's image locks it takes.
///
/// QEMU (block/file-posix.c) describes every open by the permissions it holds and those it lets others hold,
/// and publishes both as open-file-description locks on single bytes: byte 100 + N while it holds permission
/// N, byte 200 + N while it refuses to share it. Tern takes the same bytes, so that Tern and QEMU see each other.
public enum ImageAccess: Sendable, Equatable {
    /// Reading and writing (a running VM's disk, a writing `tern image` verb): holds consistent read, write and
    /// resize; refuses other writers and resizers, as qemu-img and QEMU's -drive do for a writable image.
    case write
    /// Reading (an image being inspected, a conversion's source, a backing file): holds consistent read; lets
    /// others read, refuses writers and resizers, as QEMU does for a read-only image or a backing file.
    case read
    /// Reading without a lock and without looking for one (`-U`, `--force-share`, as qemu-img).
    case forceShare

    /// The permissions held and shared, or nil for no locking.
    var permissions: (held: BlockPermissions, shared: BlockPermissions)? {
        switch self {
        case .write: return ([.consistentRead, .write, .resize], [.consistentRead, .writeUnchanged])
        case .read: return ([.consistentRead], [.consistentRead, .writeUnchanged])
        case .forceShare: return nil
        }
    }
}

/// QEMU's BLK_PERM_* bits (include/block/block-common.h); bit N is locked at byte 100 + N and 200 + N.
struct BlockPermissions: OptionSet, Sendable {
    let rawValue: UInt8
    static let consistentRead = BlockPermissions(rawValue: 1 << 0)
    static let write = BlockPermissions(rawValue: 1 << 1)
    static let writeUnchanged = BlockPermissions(rawValue: 1 << 2)
    static let resize = BlockPermissions(rawValue: 1 << 3)
    /// Every bit QEMU locks (GRAPH_MOD, once bit 4, is gone since QEMU 6.2).
    static let count = 4
}

/// The device and inode that identify a file however it is reached (symlinks, hard links).
public struct FileIdentity: Hashable, Sendable {
    public let device: UInt64
    public let inode: UInt64

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }

    /// The identity of the file at `path`, following symlinks, or nil if there is none.
    public init?(path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        self.init(st)
    }
}

/// QEMU-compatible image locks on an open file descriptor, and the images this process has open.
enum ImageLock {
    /// Byte offsets of QEMU's "permission held" and "permission not shared" locks.
    static let heldBase: Int64 = 100
    static let unsharedBase: Int64 = 200
    // Linux fcntl commands for open file description locks, which Glibc's Swift overlay does not export.
    static let getLock: Int32 = 36
    static let setLock: Int32 = 37

    /// Takes the locks `access` calls for on `fd`, then checks that no other open holds a conflicting one.
    /// Locks first and looks second, as QEMU does, so that of two racing opens at least one sees the other.
    /// OFD locks belong to the open file description, so a second open of the same file in this process
    /// conflicts with the first just as another process's would.
    static func acquire(fd: Int32, path: String, access: ImageAccess, identity: FileIdentity) throws(DiskError) {
        guard let (held, shared) = access.permissions else { return }
        for bit in 0..<BlockPermissions.count {
            let permission = BlockPermissions(rawValue: 1 << UInt8(bit))
            if held.contains(permission) { try lock(fd, byte: heldBase + Int64(bit), path: path) }
            if !shared.contains(permission) { try lock(fd, byte: unsharedBase + Int64(bit), path: path) }
        }
        if let holder = try conflict(fd, held: held, shared: shared, path: path) {
            release(fd)
            let who = OpenImages.contains(identity) ? "this process" : "another process"
            throw .inUse("image is in use by \(who) (\(holder) lock held)", readOnly: access != .write)
        }
    }

    /// Checks, without locking, that a writer could open the file at `fd` (another open holds none of its locks).
    static func testWritable(fd: Int32, path: String) throws(DiskError) {
        let (held, shared) = ImageAccess.write.permissions!
        if let holder = try conflict(fd, held: held, shared: shared, path: path) {
            let who = FileIdentity(fd: fd).map(OpenImages.contains) == true ? "this process" : "another process"
            throw .inUse("image is in use by \(who) (\(holder) lock held)", readOnly: false)
        }
    }

    /// Describes the first lock another open holds against `held`/`shared` ("write" or "read"), or nil.
    private static func conflict(_ fd: Int32, held: BlockPermissions, shared: BlockPermissions,
                                 path: String) throws(DiskError) -> String? {
        // Someone holding a permission we refuse to share: a writer or resizer.
        for bit in 0..<BlockPermissions.count where !shared.contains(BlockPermissions(rawValue: 1 << UInt8(bit))) {
            if try isLockedByOthers(fd, byte: heldBase + Int64(bit), path: path) { return "write" }
        }
        // Someone refusing to share a permission we hold: a reader or writer that keeps others from writing.
        for bit in 0..<BlockPermissions.count where held.contains(BlockPermissions(rawValue: 1 << UInt8(bit))) {
            if try isLockedByOthers(fd, byte: unsharedBase + Int64(bit), path: path) {
                return bit == 0 ? "exclusive" : "read"
            }
        }
        return nil
    }

    private static func lock(_ fd: Int32, byte: Int64, path: String) throws(DiskError) {
        var request = lockRequest(type: F_RDLCK, byte: byte)
        guard fcntl(fd, setLock, &request) == 0 else {
            // A shared lock fails only against an exclusive one, which QEMU never takes on these bytes.
            if errno == EAGAIN || errno == EACCES { throw .inUse("image is locked exclusively by another process", readOnly: false) }
            throw .io("lock \(path)", errno: errno)
        }
    }

    private static func isLockedByOthers(_ fd: Int32, byte: Int64, path: String) throws(DiskError) -> Bool {
        var probe = lockRequest(type: F_WRLCK, byte: byte)
        guard fcntl(fd, getLock, &probe) == 0 else { throw .io("test the locks of \(path)", errno: errno) }
        return probe.l_type != Int16(F_UNLCK)
    }

    /// Drops every lock this open file description holds on QEMU's bytes.
    static func release(_ fd: Int32) {
        var request = lockRequest(type: F_UNLCK, byte: heldBase)
        request.l_len = off_t(unsharedBase + Int64(BlockPermissions.count) - heldBase)
        _ = fcntl(fd, setLock, &request)
    }

    private static func lockRequest(type: Int32, byte: Int64) -> Glibc.flock {
        var request = Glibc.flock()
        request.l_type = Int16(type)
        request.l_whence = Int16(SEEK_SET)
        request.l_start = off_t(byte)
        request.l_len = 1
        request.l_pid = 0
        return request
    }
}

extension FileIdentity {
    init?(fd: Int32) {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        self.init(st)
    }
}

/// The image files this process has open, so that an output never replaces one of them (a conversion onto
/// its own source or a backing file, also through a symlink or hard link) and lock conflicts name their holder.
public enum OpenImages {
    private static let table = Mutex<[FileIdentity: Int]>([:])

    static func register(_ id: FileIdentity) { table.withLock { $0[id, default: 0] += 1 } }

    static func unregister(_ id: FileIdentity) {
        table.withLock { t in
            if let n = t[id], n > 1 { t[id] = n - 1 } else { t[id] = nil }
        }
    }

    /// Whether this process has the file open as an image.
    public static func contains(_ id: FileIdentity) -> Bool { table.withLock { $0[id] != nil } }
}

#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// An opened output for `convert`, `create` and the initramfs writer.
public struct OutputFile {
    /// The file to write.
    public let file: PosixFile
    /// Whether every byte reads as zero before the first write (a new or truncated file), so writers may
    /// skip zero ranges; a device keeps its old contents and needs them written.
    public let startsZeroed: Bool
    /// Whether the output is a block or character device (fixed size, written in place).
    public let isDevice: Bool

    /// The file an image format with its own layout (qcow2) is written to: on a device, a view that starts
    /// empty and grows up to the device's capacity.
    public func imageFile() throws(DiskError) -> any FileIO { isDevice ? try DeviceFile(file) : file }
}

/// Writes an output the way qemu-img treats what already exists at `path`, without replacing anything that
/// is not a plain file of ours:
/// - a new path: a temporary file beside it, renamed over it once complete;
/// - a regular file with one link: the same, the temporary taking the old file's owner and mode first
///   (or, if that is not permitted, the file written in place);
/// - a regular file with several links: truncated and written in place, so that every link sees the result;
/// - a symbolic link: followed, and its target treated as above (a dangling link creates its target);
/// - a block or character device: written in place; `size` beyond the device's size is refused;
/// - a FIFO, socket or directory: refused.
/// `size` is the number of bytes the output needs, when known before writing.
public func writeOutput(_ path: String, size: UInt64?, cache: CacheMode = .writeback,
                        _ body: (OutputFile) throws(DiskError) -> Void) throws(DiskError) {
    let kind = try classifyOutput(path, size: size)
    // Never over an image this process is reading, nor one another process has open.
    try checkReplaceable(path)
    switch kind {
    case .new: try replaceWithNewFile(path, keeping: nil, cache: cache, body)
    case .danglingLink: try writeInPlace(path, create: true, cache: cache, body)
    case .regular(let target, let st):
        if st.st_nlink > 1 { return try writeInPlace(target, create: false, cache: cache, body) }
        try replaceWithNewFile(target, keeping: st, cache: cache, body)
    case .device(let target):
        let file = try PosixFile(path: target, writable: true, cache: cache)
        try body(OutputFile(file: file, startsZeroed: false, isDevice: true))
        try file.sync()
    }
}

/// Refuses an output path `writeOutput` would refuse, before any work is done.
public func checkOutput(_ path: String, size: UInt64?) throws(DiskError) {
    _ = try classifyOutput(path, size: size)
}

/// What is at an output path, after following a symbolic link.
enum OutputKind {
    case new
    case danglingLink
    case regular(path: String, stat)
    case device(path: String)
}

func classifyOutput(_ path: String, size: UInt64?) throws(DiskError) -> OutputKind {
    var target = path
    var st = stat()
    if lstat(path, &st) != 0 {
        guard errno == ENOENT else { throw .io("cannot stat \(path)", errno: errno) }
        return .new
    }
    if st.st_mode & S_IFMT == S_IFLNK {
        // A dangling link: opening it creates its target, as qemu-img does.
        guard let resolved = realpath(path, nil) else { return .danglingLink }
        target = String(cString: resolved)
        free(resolved)
        guard lstat(target, &st) == 0 else { throw .io("cannot stat \(target)", errno: errno) }
    }
    switch st.st_mode & S_IFMT {
    case S_IFREG: return .regular(path: target, st)
    case S_IFBLK, S_IFCHR:
        let capacity = try deviceSize(target)
        if let size, size > capacity {
            throw .invalidArgument("\(target) is a device of \(capacity) bytes, too small for \(size) bytes (cannot grow device files)")
        }
        return .device(path: target)
    case S_IFIFO: throw .invalidArgument("\(target) is a FIFO; give a regular file or a block device")
    case S_IFSOCK: throw .invalidArgument("\(target) is a socket; give a regular file or a block device")
    case S_IFDIR: throw .invalidArgument("\(target) is a directory; give a file name inside it")
    default: throw .invalidArgument("\(target) is not a regular file or a device")
    }
}

/// Writes `contents` as the whole output at `path`, under the rules of `writeOutput`.
public func writeOutput(_ path: String, contents: [UInt8]) throws(DiskError) {
    try writeOutput(path, size: UInt64(contents.count)) { (out) throws(DiskError) in
        try out.file.writeBytes(contents, at: 0)
    }
}

/// The size of a block device, or 0 for a character device (which cannot hold an image).
private func deviceSize(_ path: String) throws(DiskError) -> UInt64 {
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    if fd < 0 { throw .io("cannot open \(path)", errno: errno) }
    defer { close(fd) }
    let end = lseek(fd, 0, SEEK_END)
    return end < 0 ? 0 : UInt64(end)
}

/// Truncates and writes an existing file (or the target of a dangling link) where it is.
private func writeInPlace(_ path: String, create: Bool, cache: CacheMode, _ body: (OutputFile) throws(DiskError) -> Void) throws(DiskError) {
    let file = try PosixFile(path: path, writable: true, create: create, cache: cache)
    try file.truncate(0)
    try body(OutputFile(file: file, startsZeroed: true, isDevice: false))
    try file.sync()
}

/// Writes a temporary file beside `path` and renames it over `path`. With `keeping`, the temporary first takes
/// that file's owner, group and mode; when it may not, the existing file is written in place instead.
private func replaceWithNewFile(_ path: String, keeping old: stat?, cache: CacheMode, _ body: (OutputFile) throws(DiskError) -> Void) throws(DiskError) {
    let temporary = path + ".tern-tmp-\(getpid())"
    // A stale or planted entry at the temporary name is removed, never followed: the file is created exclusively.
    unlink(temporary)
    let file: PosixFile
    do { file = try PosixFile(path: temporary, writable: true, create: true, exclusive: true, cache: cache) } catch {
        if case .io(_, let e) = error { throw .io("cannot create \(path)", errno: e) }
        throw error
    }
    if let old {
        if fchown(file.fd, old.st_uid, old.st_gid) != 0 || fchmod(file.fd, old.st_mode & 0o7777) != 0 {
            unlink(temporary)
            return try writeInPlace(path, create: false, cache: cache, body)
        }
    }
    do {
        try body(OutputFile(file: file, startsZeroed: true, isDevice: false))
        try file.sync()
    } catch {
        unlink(temporary)
        throw error
    }
    if rename(temporary, path) != 0 {
        let e = errno
        unlink(temporary)
        throw .io("rename \(temporary) to \(path)", errno: e)
    }
    syncDirectory(of: path)
}

/// A block device holding an image file: its size is how far the image reaches (what was truncated to or
/// written), not the device's capacity, so that a qcow2 image grows from the device's start; nothing goes past
/// the capacity.
final class DeviceFile: FileIO {
    let device: PosixFile
    let capacity: UInt64
    let end: Mutex<UInt64>

    init(_ device: PosixFile) throws(DiskError) {
        self.device = device
        capacity = try deviceSize(device.path)
        end = Mutex(0)
    }

    var isWritable: Bool { device.isWritable }

    func pread(_ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(DiskError) {
        let limit = end.withLock { $0 }
        let n = offset >= limit ? 0 : Int(min(UInt64(buffer.count), limit - offset))
        if n > 0 { try device.pread(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]), at: offset) }
        // Past the image's end the device holds old data; the image reads zeros there, as past a file's end.
        if n < buffer.count { UnsafeMutableRawBufferPointer(rebasing: buffer[n...]).initializeMemory(as: UInt8.self, repeating: 0) }
    }

    func pwrite(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(DiskError) {
        let newEnd = offset + UInt64(buffer.count)
        guard newEnd <= capacity else { throw .io("write \(device.path) past its \(capacity) bytes", errno: ENOSPC) }
        try device.pwrite(buffer, at: offset)
        end.withLock { $0 = max($0, newEnd) }
    }

    func size() throws(DiskError) -> UInt64 { end.withLock { $0 } }

    func truncate(_ size: UInt64) throws(DiskError) {
        guard size <= capacity else { throw .invalidArgument("\(device.path) holds \(capacity) bytes; the image needs \(size) (cannot grow device files)") }
        end.withLock { $0 = size }
    }

    func sync() throws(DiskError) { try device.sync() }
    func punchHole(at offset: UInt64, length: UInt64) {}
    func allocate(at offset: UInt64, length: UInt64) throws(DiskError) {
        guard offset + length <= capacity else { throw .io("allocate in \(device.path) past its \(capacity) bytes", errno: ENOSPC) }
        end.withLock { $0 = max($0, offset + length) }
    }
}

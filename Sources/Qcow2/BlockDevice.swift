#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization

/// Every failure of the disk layer. `description` is one line that names the problem.
public enum DiskError: Error, Equatable, CustomStringConvertible, Sendable {
    /// A system call failed.
    case io(String, errno: Int32)
    /// The image is damaged or hostile: a pointer, size or table does not make sense.
    case corrupt(String)
    /// A valid image uses something this engine does not implement.
    case unsupported(String)
    /// The image (or file) was opened read-only, or the corrupt bit forbids writes.
    case readOnly(String)
    /// A request falls outside the device.
    case outOfRange(offset: UInt64, length: UInt64, size: UInt64)
    /// A bad argument from the caller (size, cluster size, option).
    case invalidArgument(String)
    /// Another open of the image (in this or another process, Tern or QEMU) holds a conflicting lock.
    /// `readOnly`: the refused open only reads, so forcing sharing (`-U`) would let it proceed.
    case inUse(String, readOnly: Bool)
    /// Refused to protect an image or the host; the message names the problem and what to do instead.
    case refused(String)

    public var description: String {
        switch self {
        case .io(let what, let e): return "\(what): \(String(cString: strerror(e)))"
        case .corrupt(let s): return "image is corrupt: \(s)"
        case .unsupported(let s): return "unsupported: \(s)"
        case .readOnly(let s): return "read-only: \(s)"
        case .outOfRange(let o, let l, let s):
            return "request at offset \(o) length \(l) is past the end of the device (\(s) bytes)"
        case .invalidArgument(let s): return s
        case .inUse(let s, _): return s
        case .refused(let s): return s
        }
    }
}

/// A block device: what virtio-blk (and `tern image`) reads and writes.
public protocol BlockBackend: Sendable {
    /// Size of the device in bytes.
    var virtualSize: UInt64 { get }
    /// Reads `buffer.count` bytes at `offset`.
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(DiskError)
    /// Writes `buffer.count` bytes at `offset`.
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(DiskError)
    /// Makes every completed write durable.
    func flush() throws(DiskError)
    /// Hints that a range is no longer needed; later reads return zeros or the backing file's data.
    func discard(at offset: UInt64, length: UInt64) throws(DiskError)
    /// Makes a range read as zeros, deallocating where the format allows.
    func writeZeroes(at offset: UInt64, length: UInt64) throws(DiskError)
}

/// Positioned file I/O under a block backend. The fault injector implements this too.
public protocol FileIO: Sendable {
    /// Reads exactly `buffer.count` bytes; bytes past the end of the file read as zero.
    func pread(_ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(DiskError)
    /// Writes all of `buffer` at `offset`, extending the file if needed.
    func pwrite(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(DiskError)
    func size() throws(DiskError) -> UInt64
    func truncate(_ size: UInt64) throws(DiskError)
    func sync() throws(DiskError)
    /// Deallocates a range (hole punching). Reads of it then return zeros. Best effort.
    func punchHole(at offset: UInt64, length: UInt64)
    /// Reserves space for a range (posix_fallocate). Best effort.
    func allocate(at offset: UInt64, length: UInt64) throws(DiskError)
    var isWritable: Bool { get }
}

extension FileIO {
    func readBytes(at offset: UInt64, count: Int) throws(DiskError) -> [UInt8] {
        var a = [UInt8](repeating: 0, count: count)
        try rw(&a) { (b) throws(DiskError) in try pread(b, at: offset) }
        return a
    }
    func writeBytes(_ bytes: [UInt8], at offset: UInt64) throws(DiskError) {
        try ro(bytes) { (b) throws(DiskError) in try pwrite(b, at: offset) }
    }
}

@_silgen_name("fallocate")
func c_fallocate(_ fd: Int32, _ mode: Int32, _ offset: off_t, _ len: off_t) -> Int32

/// A POSIX read-write lock: many holders of the shared side, or one of the exclusive side.
final class ReadWriteLock: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)

    init() { pthread_rwlock_init(lock, nil) }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    func withSharedLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    func withExclusiveLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}

/// How an image file uses the host's page cache.
public enum CacheMode: String, Sendable, Codable, CaseIterable {
    /// Through the page cache (buffered I/O); a guest flush makes writes durable with fdatasync.
    case writeback
    /// Around the page cache (O_DIRECT): no double caching of guest data in host memory; flushes still fdatasync.
    case none
}

/// A file opened with open(2). Thread-safe: every call is a positioned system call.
///
/// With `CacheMode.none` the file is opened with O_DIRECT, which wants buffer addresses, offsets and lengths
/// aligned to `directAlignment`. Aligned requests go straight through; others bounce through an aligned buffer
/// (read-modify-write for writes, the file's size kept as a buffered write would leave it). Aligned writes run
/// concurrently; a read-modify-write excludes every other write, so that none lands inside it.
public final class PosixFile: FileIO {
    public let fd: Int32
    public let path: String
    public let isWritable: Bool
    public let cache: CacheMode
    /// Alignment O_DIRECT transfers keep: the largest logical block size in use on Linux file systems.
    public static let directAlignment = 4096
    /// Bounce size for unaligned O_DIRECT requests.
    static let bounceSize = 1 << 20
    /// The aligned buffer unaligned O_DIRECT requests go through (empty with the page cache).
    private let bounce: Mutex<UnsafeMutableRawBufferPointer>
    /// O_DIRECT writes: aligned ones share it, a read-modify-write holds it alone so that no write to its blocks
    /// lands between its read and its write.
    private let writeOrder = ReadWriteLock()
    /// O_DIRECT, which Glibc's Swift overlay does not export.
    #if arch(arm64)
    static let directFlag: Int32 = 0o200000
    #else
    static let directFlag: Int32 = 0o40000
    #endif

    /// The file's device and inode.
    public let identity: FileIdentity

    /// Opens `path`, which must be a regular file or a block device, and locks it as QEMU would: for writing
    /// when `writable`, for shared reading otherwise, not at all with `forceShare` (read-only opens only).
    public init(path: String, writable: Bool, create: Bool = false, exclusive: Bool = false,
                cache: CacheMode = .writeback, forceShare: Bool = false) throws(DiskError) {
        if forceShare && writable { throw .invalidArgument("force-share (-U) works only for read-only opens") }
        // O_NONBLOCK keeps a FIFO from blocking the open; it is cleared once the file is known to be a file.
        var flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK
        if create { flags |= O_CREAT }
        if exclusive { flags |= O_EXCL }
        if cache == .none { flags |= Self.directFlag }
        let fd = open(path, flags, 0o644)
        if fd < 0 {
            let e = errno
            if cache == .none && e == EINVAL {
                throw .unsupported("\(path): its file system does not support O_DIRECT (cache=none); use cache=writeback")
            }
            // A socket cannot be opened at all, a directory not for writing.
            if e == ENXIO || e == EISDIR { throw .refused("not a regular file or block device") }
            throw .io("cannot open \(path)", errno: e)
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw .io("stat \(path)", errno: e)
        }
        let type = st.st_mode & S_IFMT
        guard type == S_IFREG || type == S_IFBLK else {
            close(fd)
            throw .refused("not a regular file or block device")
        }
        guard fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0 else {
            let e = errno
            close(fd)
            throw .io("open \(path)", errno: e)
        }
        let identity = FileIdentity(st)
        do throws(DiskError) {
            try ImageLock.acquire(fd: fd, path: path, access: forceShare ? .forceShare : writable ? .write : .read,
                                  identity: identity)
        } catch {
            close(fd)
            throw error
        }
        OpenImages.register(identity)
        self.fd = fd
        self.path = path
        self.isWritable = writable
        self.cache = cache
        self.identity = identity
        bounce = Mutex(UnsafeMutableRawBufferPointer.allocate(
            byteCount: cache == .none ? Self.bounceSize : 0, alignment: Self.directAlignment))
    }

    deinit {
        // Unlocked explicitly: a child process forked meanwhile may share the open file description until it execs.
        ImageLock.release(fd)
        OpenImages.unregister(identity)
        close(fd)
        bounce.withLock { $0.deallocate() }
    }

    private static func isAligned(_ value: Int) -> Bool { value & (directAlignment - 1) == 0 }

    private static func isAligned(_ buffer: UnsafeRawBufferPointer, _ offset: UInt64) -> Bool {
        isAligned(Int(bitPattern: buffer.baseAddress)) && isAligned(buffer.count) && offset & UInt64(directAlignment - 1) == 0
    }

    public func pread(_ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(DiskError) {
        guard buffer.count > 0 else { return }
        if cache == .none, !Self.isAligned(UnsafeRawBufferPointer(buffer), offset) {
            try bounce.withLock { (bounce: inout UnsafeMutableRawBufferPointer) throws(DiskError) in
                try bounced(buffer.count, at: offset, through: bounce) { chunk, start, range throws(DiskError) in
                    try readFully(chunk, at: start)
                    (buffer.baseAddress! + range.lowerBound).copyMemory(
                        from: chunk.baseAddress! + Int(offset + UInt64(range.lowerBound) - start), byteCount: range.count)
                }
            }
            return
        }
        try readFully(buffer, at: offset)
    }

    public func pwrite(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(DiskError) {
        guard buffer.count > 0 else { return }
        guard cache == .none else { return try writeFully(buffer, at: offset) }
        if Self.isAligned(buffer, offset) {
            return try writeOrder.withSharedLock { () throws(DiskError) in try writeFully(buffer, at: offset) }
        }
        try writeOrder.withExclusiveLock { () throws(DiskError) in try readModifyWrite(buffer, at: offset) }
    }

    /// An unaligned O_DIRECT write: whole blocks read, patched and written back through the bounce buffer.
    private func readModifyWrite(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(DiskError) {
        try bounce.withLock { (bounce: inout UnsafeMutableRawBufferPointer) throws(DiskError) in
            let sizeBefore = try size()
            try bounced(buffer.count, at: offset, through: bounce) { chunk, start, range throws(DiskError) in
                try readFully(chunk, at: start)
                (chunk.baseAddress! + Int(offset + UInt64(range.lowerBound) - start)).copyMemory(
                    from: buffer.baseAddress! + range.lowerBound, byteCount: range.count)
                try writeFully(UnsafeRawBufferPointer(chunk), at: start)
            }
            // Whole blocks went out: give back what the file would not have grown by with a buffered write.
            let end = max(sizeBefore, offset + UInt64(buffer.count))
            if try size() > end { try truncate(end) }
        }
    }

    /// Walks `count` bytes at `offset` in aligned chunks of the bounce buffer: `body` gets the chunk (aligned
    /// length), the file offset it starts at, and the range of the caller's buffer it covers.
    private func bounced(
        _ count: Int, at offset: UInt64, through bounce: UnsafeMutableRawBufferPointer,
        _ body: (UnsafeMutableRawBufferPointer, UInt64, Range<Int>) throws(DiskError) -> Void
    ) throws(DiskError) {
        let mask = UInt64(Self.directAlignment - 1)
        var done = 0
        while done < count {
            let position = offset + UInt64(done)
            let start = position & ~mask
            let chunkEnd = min(start + UInt64(bounce.count), (offset + UInt64(count) + mask) & ~mask)
            let covered = Int(min(chunkEnd, offset + UInt64(count)) - position)
            try body(UnsafeMutableRawBufferPointer(rebasing: bounce[0..<Int(chunkEnd - start)]), start, done..<(done + covered))
            done += covered
        }
    }

    private func readFully(_ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(DiskError) {
        var done = 0
        while done < buffer.count {
            let n = Glibc.pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw .io("read \(path)", errno: errno)
            }
            if n == 0 {
                // Past the end of the file: the rest reads as zeros.
                (buffer.baseAddress! + done).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - done)
                return
            }
            done += n
        }
    }

    private func writeFully(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(DiskError) {
        var done = 0
        while done < buffer.count {
            let n = Glibc.pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw .io("write \(path)", errno: errno)
            }
            done += n
        }
    }

    public func size() throws(DiskError) -> UInt64 {
        var st = stat()
        if fstat(fd, &st) != 0 { throw .io("stat \(path)", errno: errno) }
        if (st.st_mode & S_IFMT) == S_IFBLK {
            let end = lseek(fd, 0, SEEK_END)
            if end < 0 { throw .io("seek \(path)", errno: errno) }
            return UInt64(end)
        }
        return UInt64(st.st_size)
    }

    /// Bytes the file occupies on disk.
    public func allocatedBytes() -> UInt64 {
        var st = stat()
        if fstat(fd, &st) != 0 { return 0 }
        return UInt64(st.st_blocks) * 512
    }

    public func truncate(_ size: UInt64) throws(DiskError) {
        if ftruncate(fd, off_t(size)) != 0 { throw .io("truncate \(path)", errno: errno) }
    }

    public func sync() throws(DiskError) {
        if fdatasync(fd) != 0 { throw .io("sync \(path)", errno: errno) }
    }

    public func punchHole(at offset: UInt64, length: UInt64) {
        // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        _ = c_fallocate(fd, 0x02 | 0x01, off_t(offset), off_t(length))
    }

    public func allocate(at offset: UInt64, length: UInt64) throws(DiskError) {
        let r = posix_fallocate(fd, off_t(offset), off_t(length))
        if r != 0 { throw .io("allocate space in \(path)", errno: r) }
    }
}

/// An in-memory file, for fuzzing and tests.
public final class MemoryFile: FileIO {
    private let bytes: Mutex<[UInt8]>
    public let isWritable: Bool
    /// Writes or truncations past this size fail with EFBIG.
    public let maxSize: UInt64

    public init(_ contents: [UInt8] = [], writable: Bool = true, maxSize: UInt64 = 1 << 40) {
        bytes = Mutex(contents)
        isWritable = writable
        self.maxSize = maxSize
    }

    public var contents: [UInt8] { bytes.withLock { $0 } }

    public func pread(_ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(DiskError) {
        bytes.withLock { b in
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            guard offset < UInt64(b.count) else { return }
            let n = min(buffer.count, b.count - Int(offset))
            b.withUnsafeBytes { src in
                buffer.baseAddress!.copyMemory(from: src.baseAddress! + Int(offset), byteCount: n)
            }
        }
    }

    public func pwrite(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(DiskError) {
        guard offset + UInt64(buffer.count) <= maxSize else { throw .io("write memory file", errno: EFBIG) }
        bytes.withLock { b in
            let end = Int(offset) + buffer.count
            if end > b.count { b.append(contentsOf: repeatElement(0, count: end - b.count)) }
            b.withUnsafeMutableBytes { dst in
                if buffer.count > 0 { (dst.baseAddress! + Int(offset)).copyMemory(from: buffer.baseAddress!, byteCount: buffer.count) }
            }
        }
    }

    public func size() throws(DiskError) -> UInt64 { bytes.withLock { UInt64($0.count) } }

    public func truncate(_ size: UInt64) throws(DiskError) {
        guard size <= maxSize else { throw .io("truncate memory file", errno: EFBIG) }
        bytes.withLock { b in
            if Int(size) < b.count { b.removeLast(b.count - Int(size)) }
            else { b.append(contentsOf: repeatElement(0, count: Int(size) - b.count)) }
        }
    }

    public func sync() throws(DiskError) {}
    public func punchHole(at offset: UInt64, length: UInt64) {}
    public func allocate(at offset: UInt64, length: UInt64) throws(DiskError) {
        let s = try size()
        if offset + length > s { try truncate(offset + length) }
    }
}

/// A raw image: the file is the disk.
public final class RawBackend: BlockBackend {
    public let file: any FileIO
    public let virtualSize: UInt64
    /// Set when the format was probed rather than given: refuses first-sector writes that would change it.
    let probedGuard: ProbedRawGuard?

    /// `probed`: the format was probed, not given; writes that would make the image probe as another format
    /// are then refused.
    public init(file: any FileIO, probed: Bool = false) throws(DiskError) {
        self.file = file
        self.virtualSize = try file.size()
        self.probedGuard = probed ? ProbedRawGuard() : nil
    }

    public convenience init(path: String, writable: Bool) throws(DiskError) {
        try self.init(file: PosixFile(path: path, writable: writable))
    }

    @inline(__always) private func checkRange(_ offset: UInt64, _ count: UInt64) throws(DiskError) {
        let (end, o) = offset.addingReportingOverflow(count)
        if o || end > virtualSize { throw .outOfRange(offset: offset, length: count, size: virtualSize) }
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(DiskError) {
        try checkRange(offset, UInt64(buffer.count))
        try file.pread(buffer, at: offset)
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(DiskError) {
        guard file.isWritable else { throw .readOnly("raw image opened read-only") }
        try checkRange(offset, UInt64(buffer.count))
        if let probedGuard, ProbedRawGuard.covers(offset), buffer.count > 0 {
            return try probedGuard.guarded(self, ProbedRawGuard.writing(buffer, at: offset)) { () throws(DiskError) in
                try file.pwrite(buffer, at: offset)
            }
        }
        try file.pwrite(buffer, at: offset)
    }

    public func flush() throws(DiskError) { try file.sync() }

    public func discard(at offset: UInt64, length: UInt64) throws(DiskError) {
        guard file.isWritable else { throw .readOnly("raw image opened read-only") }
        try checkRange(offset, length)
        if let probedGuard, ProbedRawGuard.covers(offset), length > 0 {
            return try probedGuard.guarded(self, ProbedRawGuard.zeroing(offset, length)) { () throws(DiskError) in
                file.punchHole(at: offset, length: length)
            }
        }
        file.punchHole(at: offset, length: length)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64) throws(DiskError) {
        guard file.isWritable else { throw .readOnly("raw image opened read-only") }
        try checkRange(offset, length)
        if let probedGuard, ProbedRawGuard.covers(offset), length > 0 {
            return try probedGuard.guarded(self, ProbedRawGuard.zeroing(offset, length)) { () throws(DiskError) in
                try fillZeroes(at: offset, length: length)
            }
        }
        try fillZeroes(at: offset, length: length)
    }

    private func fillZeroes(at offset: UInt64, length: UInt64) throws(DiskError) {
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var o = offset
        let end = offset + length
        while o < end {
            let n = Int(min(UInt64(zeros.count), end - o))
            try file.pwrite(UnsafeRawBufferPointer(rebasing: zeros[0..<n]), at: o)
            o += UInt64(n)
        }
    }
}

/// Reads `count` bytes from a backend at `offset`, zero-filling anything past its end.
func readClamped(_ dev: any BlockBackend, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(DiskError) {
    let size = dev.virtualSize
    if offset >= size {
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        return
    }
    let n = Int(min(UInt64(buffer.count), size - offset))
    try dev.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]))
    if n < buffer.count {
        UnsafeMutableRawBufferPointer(rebasing: buffer[n...]).initializeMemory(as: UInt8.self, repeating: 0)
    }
}

/// `Array.withUnsafeBytes` with a typed-throwing body.
@inline(__always)
func ro<T, R>(_ a: [T], _ body: (UnsafeRawBufferPointer) throws(DiskError) -> R) throws(DiskError) -> R {
    let r: Result<R, DiskError> = a.withUnsafeBytes { p in
        do throws(DiskError) { return .success(try body(p)) } catch { return .failure(error) }
    }
    return try r.get()
}

/// `Array.withUnsafeMutableBytes` with a typed-throwing body.
@inline(__always)
func rw<T, R>(_ a: inout [T], _ body: (UnsafeMutableRawBufferPointer) throws(DiskError) -> R) throws(DiskError) -> R {
    let r: Result<R, DiskError> = a.withUnsafeMutableBytes { p in
        do throws(DiskError) { return .success(try body(p)) } catch { return .failure(error) }
    }
    return try r.get()
}

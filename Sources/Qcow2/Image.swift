#if canImport(Glibc)
import Glibc
#endif
import Synchronization

public enum ImageFormat: String, Sendable { case raw, qcow2 }

public enum Preallocation: String, Sendable, CaseIterable { case off, metadata, full }

public struct Qcow2CreateOptions: Sendable {
    public var size: UInt64
    public var clusterSize: UInt64 = 65536
    public var version: UInt32 = 3
    public var refcountBits: UInt32 = 16
    public var backingFile: String? = nil
    public var backingFormat: ImageFormat? = nil
    public var preallocation: Preallocation = .off
    public var extendedL2 = false
    public var lazyRefcounts = false
    public init(size: UInt64) { self.size = size }
}

public struct Qcow2OpenOptions: Sendable {
    public var writable = false
    /// Bytes of L2 tables kept in memory.
    public var l2CacheBytes = 32 << 20
    /// Open the backing chain (otherwise unallocated clusters read as zeros).
    public var openBacking = true
    /// Resolves a backing file name to a device; defaults to opening files relative to the image.
    public var backingOverride: (any BlockBackend)? = nil
    /// How the image and its backing files use the host's page cache.
    public var cache: CacheMode = .writeback
    /// Reads without taking or testing image locks (`-U`); read-only opens only.
    public var forceShare = false
    /// Opens what `check` must report on rather than refuse: tables past the end of the file, an empty refcount
    /// table, a truncated snapshot table, a corrupt bit on a writable open (for repair).
    public var lenient = false
    public init(writable: Bool = false) { self.writable = writable }
}

func dirname(_ p: String) -> String {
    guard let i = p.lastIndex(of: "/") else { return "" }
    return i == p.startIndex ? "/" : String(p[..<i])
}

/// Resolves a backing file name the way QEMU does: relative names are relative to the image's directory.
public func resolveBacking(_ name: String, relativeTo image: String) -> String {
    if name.hasPrefix("/") { return name }
    let d = dirname(image)
    return d.isEmpty ? name : d + "/" + name
}

/// The absolute, symlink-free form of a path (for loop detection), or the path itself.
func canonicalPath(_ p: String) -> String {
    guard let r = realpath(p, nil) else { return p }
    defer { free(r) }
    return String(cString: r)
}

/// Opens an image file of either format, locked as QEMU locks it: a writable image for writing, a read-only one
/// and every backing file for shared reading, nothing with `forceShare` (`-U`, read-only opens only).
/// A writable image whose format is probed as raw warns once and refuses first-sector writes that would change
/// the probed format (`ProbedRawGuard`); formats Tern does not read are refused by name (`probeFormat`).
public func openImage(path: String, format: ImageFormat? = nil, writable: Bool = false, cache: CacheMode = .writeback,
                      forceShare: Bool = false, depth: Int = 0, seen: [String] = []) throws(DiskError) -> any BlockBackend {
    guard depth < 32 else { throw .corrupt("backing chain is deeper than 32 images") }
    guard !seen.contains(canonicalPath(path)) else { throw .corrupt("backing chain loops back to \(path)") }
    let f = try PosixFile(path: path, writable: writable, cache: cache, forceShare: forceShare)
    let fmt: ImageFormat
    if let f0 = format { fmt = f0 } else { fmt = try probeFormat(f) }
    switch fmt {
    case .raw:
        let probed = format == nil && writable
        if probed {
            let warning = "tern: WARNING: \(path): format was not specified; probed as raw, writes to block 0 that would change the probed format are refused. Specify format=raw to remove the restriction.\n"
            _ = warning.withCString { write(2, $0, strlen($0)) }
        }
        return try RawBackend(file: f, probed: probed)
    case .qcow2:
        var o = Qcow2OpenOptions(writable: writable)
        o.openBacking = true
        o.cache = cache
        o.forceShare = forceShare
        return try Qcow2Image(file: f, path: path, options: o, depth: depth, seen: seen + [canonicalPath(path)])
    }
}

/// A qcow2 image: a block device with copy-on-write clusters, a backing chain and internal snapshots.
///
/// Reads and in-place writes of allocated clusters do their data I/O outside the metadata lock;
/// allocation, copy-on-write and every metadata update happen under it. Snapshot, resize and
/// repair operations expect no guest I/O in flight.
public final class Qcow2Image: BlockBackend {
    public let path: String?
    public let file: any FileIO
    public let backing: (any BlockBackend)?
    public let writable: Bool
    let g: Geometry
    let dp: DataPath
    let meta: Mutex<Meta>
    let sizeValue: Atomic<UInt64>
    let ccache = DecompressCache()

    public var virtualSize: UInt64 { sizeValue.load(ordering: .relaxed) }
    public var header: Qcow2Header { meta.withLock { $0.header } }
    public var snapshots: [Qcow2Snapshot] { meta.withLock { $0.snapshots } }
    public var clusterSize: UInt64 { g.cs }

    public convenience init(path: String, options: Qcow2OpenOptions = Qcow2OpenOptions()) throws(DiskError) {
        try self.init(file: PosixFile(path: path, writable: options.writable, cache: options.cache, forceShare: options.forceShare),
                      path: path, options: options)
    }

    public init(file: any FileIO, path: String?, options: Qcow2OpenOptions, depth: Int = 0, seen: [String] = []) throws(DiskError) {
        self.file = file
        self.path = path
        let physical = try file.size()
        let first = try file.readBytes(at: 0, count: Int(min(physical, 4096)))
        guard first.count >= 24 else { throw .corrupt("file is too short for a qcow2 header (\(physical) bytes)") }
        let bitsPeek = be32(first, 20)
        let want = (9...21).contains(bitsPeek) ? Int(min(physical, UInt64(1) << UInt64(bitsPeek))) : first.count
        let c0 = want > first.count ? try file.readBytes(at: 0, count: want) : first
        var h = try Qcow2Header.parse(c0, fileSize: physical, lenient: options.lenient)
        let writable = options.writable && file.isWritable
        if options.writable && !file.isWritable { throw .readOnly("file opened read-only") }
        if writable && !options.lenient && h.incompatibleFeatures & QC.incompatCorrupt != 0 {
            throw .readOnly("the image is marked corrupt; writes are forbidden (run check --repair)")
        }
        self.writable = writable
        let g = Geometry(h)
        self.g = g
        // Backing chain.
        var backing: (any BlockBackend)? = options.backingOverride
        if backing == nil, options.openBacking, let name = h.backingFile {
            guard let p = path else { throw .unsupported("cannot resolve backing file \(name) without an image path") }
            let bp = resolveBacking(name, relativeTo: p)
            let fmt: ImageFormat?
            if let f = h.backingFormat {
                guard let ff = ImageFormat(rawValue: f) else { throw .unsupported("backing format '\(f)'") }
                fmt = ff
            } else { fmt = nil }
            do {
                backing = try openImage(path: bp, format: fmt, writable: false, cache: options.cache, forceShare: options.forceShare,
                                        depth: depth + 1, seen: seen.isEmpty ? [canonicalPath(p)] : seen)
            } catch {
                switch error {
                case .io(_, let e): throw .io("cannot open backing file \(bp)", errno: e)
                case .inUse(let s, let readOnly): throw .inUse("backing file \(bp): \(s)", readOnly: readOnly)
                case .refused(let s): throw .refused("backing file \(bp): \(s)")
                default: throw error
                }
            }
        }
        self.backing = backing
        self.dp = DataPath(file: file, backing: backing, g: g)
        // Tables.
        let fileLimit = physical
        let l1: [UInt64]
        do {
            var t = [UInt64](repeating: 0, count: Int(h.l1Size))
            if h.l1Size > 0 {
                try rw(&t) { (b) throws(DiskError) in try file.pread(b, at: h.l1TableOffset) }
                for i in t.indices { t[i] = UInt64(bigEndian: t[i]) }
            }
            l1 = t
        }
        let rtEntries = Int(UInt64(h.refcountTableClusters) * g.cs / 8)
        var rt = [UInt64](repeating: 0, count: rtEntries)
        try rw(&rt) { (b) throws(DiskError) in try file.pread(b, at: h.refcountTableOffset) }
        for i in rt.indices { rt[i] = UInt64(bigEndian: rt[i]) }
        let (snaps, snapBytes, snapshotProblem) = h.nbSnapshots > 0
            ? try Qcow2Snapshot.parseTable(file, header: h, fileSize: physical, lenient: options.lenient) : ([], 0, nil)
        var m = Meta(
            file: file, g: g, dp: dp, header: h, l1: l1,
            l2Max: max(16, options.l2CacheBytes / Int(g.cs)),
            refTable: rt, refTableDiskEntries: rtEntries,
            rbMax: max(16, (8 << 20) / Int(g.cs)),
            endCluster: (physical + g.cs - 1) / g.cs, fileLimit: fileLimit,
            snapshots: snaps, snapshotTableBytes: snapBytes)
        m.openProblems = snapshotProblem.map { [$0] } ?? []
        if writable && !options.lenient {
            if h.incompatibleFeatures & QC.incompatDirty != 0 {
                _ = try Checker.run(&m, repair: .all)
                m.header.incompatibleFeatures &= ~QC.incompatDirty
            }
            // Autoclear bits we do not know are cleared before the first write. The bitmaps' bit stays until guest
            // data is first written (`willWriteGuestData`): an open that writes none leaves the bitmaps valid.
            m.header.autoclearFeatures &= QC.autoclearBitmaps
            if m.header != h {
                try m.rewriteHeader()
                try file.sync()
                h = m.header
            }
        }
        m.bitmapsValidOnDisk = writable && h.autoclearFeatures & QC.autoclearBitmaps != 0
        m.name = path ?? "qcow2 image"
        m.lazy = writable && h.version >= 3 && h.compatibleFeatures & QC.compatLazyRefcounts != 0
        self.meta = Mutex(m)
        self.sizeValue = Atomic(h.size)
    }

    // MARK: create

    /// Creates a qcow2 image in `file` (which should be empty).
    public static func create(file: any FileIO, options o: Qcow2CreateOptions) throws(DiskError) {
        guard o.clusterSize.nonzeroBitCount == 1, (512...(2 << 20)).contains(o.clusterSize) else {
            throw .invalidArgument("cluster size must be a power of two between 512 and 2097152 bytes")
        }
        guard o.refcountBits.nonzeroBitCount == 1, o.refcountBits <= 64 else {
            throw .invalidArgument("refcount bits must be a power of two between 1 and 64")
        }
        guard o.size <= QC.maxVirtualSize else { throw .invalidArgument("size \(o.size) is too large") }
        guard o.version == 2 || o.version == 3 else { throw .invalidArgument("version must be 2 or 3") }
        if o.version == 2 && (o.refcountBits != 16 || o.extendedL2 || o.lazyRefcounts) {
            throw .invalidArgument("qcow2 v2 (compat 0.10) supports only 16-bit refcounts, no extended L2 and no lazy refcounts")
        }
        if o.extendedL2 && o.clusterSize < 16384 { throw .invalidArgument("extended L2 entries need clusters of at least 16 KiB") }
        let cs = o.clusterSize
        var h = Qcow2Header()
        h.version = o.version
        h.clusterBits = UInt32(o.clusterSize.trailingZeroBitCount)
        h.refcountOrder = UInt32(o.refcountBits.trailingZeroBitCount)
        h.headerLength = o.version >= 3 ? 112 : 72
        h.refcountTableOffset = cs
        h.refcountTableClusters = 1
        h.backingFile = o.backingFile
        h.backingFormat = o.backingFile == nil ? nil : (o.backingFormat ?? .raw).rawValue
        if o.extendedL2 { h.incompatibleFeatures |= QC.incompatExtendedL2 }
        if o.lazyRefcounts { h.compatibleFeatures |= QC.compatLazyRefcounts }
        var c0 = try h.serialize()
        c0.append(contentsOf: repeatElement(0, count: Int(cs) - c0.count))
        var rt = [UInt8](repeating: 0, count: Int(cs))
        rt.put64(2 * cs, at: 0)
        // Refcount block 0: header, refcount table, the block itself.
        var rb = [UInt8](repeating: 0, count: Int(cs))
        let order = h.refcountOrder
        for c in 0..<3 {
            let bitsPer = 1 << Int(order)
            let bitOff = c * bitsPer
            if bitsPer >= 8 { rb[bitOff / 8 + bitsPer / 8 - 1] = 1 } else { rb[bitOff / 8] |= 1 << UInt8(bitOff % 8) }
        }
        try file.truncate(0)
        try file.writeBytes(c0 + rt + rb, at: 0)
        var open = Qcow2OpenOptions(writable: true)
        open.openBacking = false
        let img = try Qcow2Image(file: file, path: nil, options: open)
        try img.resize(to: o.size)
        if o.preallocation != .off { try img.preallocate(full: o.preallocation == .full) }
        try img.flush()
    }

    /// Creates an image at `path` under the rules of `writeOutput` (a new file is written beside it, then renamed).
    public static func create(path: String, options: Qcow2CreateOptions) throws(DiskError) {
        if let b = options.backingFile {
            // Check that the backing file exists and has the stated format.
            let bp = resolveBacking(b, relativeTo: path)
            _ = try openImage(path: bp, format: options.backingFormat, writable: false)
        }
        try writeOutput(path, size: nil) { (out) throws(DiskError) in try create(file: out.imageFile(), options: options) }
    }

    func preallocate(full: Bool) throws(DiskError) {
        try meta.withLock { (m) throws(DiskError) in
            let total = (m.header.size + m.cs - 1) / m.cs
            var gc: UInt64 = 0
            while gc < total {
                let l1i = Int(gc / m.g.l2Entries)
                let l2off = try m.writableL2(l1i)
                let n = min(m.g.l2Entries - gc % m.g.l2Entries, total - gc)
                m.deferRefcounts = true
                let start = try m.appendClusters(n)
                try m.flushRefcounts()
                var t = try m.loadL2(l2off)
                for k in 0..<n {
                    let idx = Int((gc + k) % m.g.l2Entries)
                    let host = (start + k) * m.cs
                    if m.g.ext { t[2 * idx] = host | QC.copied; t[2 * idx + 1] = 0xffff_ffff }
                    else { t[idx] = host | QC.copied }
                }
                if full { try m.file.allocate(at: start * m.cs, length: n * m.cs) }
                else { try m.file.truncate(max(try m.file.size(), (start + n) * m.cs)) }
                try m.writeL2Table(l2off, t)
                gc += n
            }
        }
    }

    // MARK: BlockBackend

    @inline(__always) func checkRange(_ offset: UInt64, _ count: Int) throws(DiskError) {
        let size = virtualSize
        let (end, o) = offset.addingReportingOverflow(UInt64(count))
        if o || end > size { throw .outOfRange(offset: offset, length: UInt64(count), size: size) }
    }

    /// Runs a short metadata operation. Tries the lock a few times before blocking: the critical
    /// sections on the I/O path are a table lookup, and a contended Mutex sleeps in the kernel.
    @inline(__always)
    func quick<R: Sendable>(_ body: (inout Meta) throws(DiskError) -> R) throws(DiskError) -> R {
        for _ in 0..<40 {
            if let r = try meta.withLockIfAvailable({ (m) throws(DiskError) -> R in try body(&m) }) { return r }
            sched_yield()
        }
        return try meta.withLock { (m) throws(DiskError) -> R in try body(&m) }
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(DiskError) {
        try checkRange(offset, buffer.count)
        if buffer.count == 0 { return }
        let segs = try quick { (m) throws(DiskError) -> [Segment] in try m.map(offset, buffer.count) }
        try dp.perform(segs, base: offset, into: buffer, cache: ccache)
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(DiskError) {
        guard writable else { throw .readOnly("image opened read-only") }
        try checkRange(offset, buffer.count)
        var done = 0
        while done < buffer.count {
            let pos = offset + UInt64(done)
            let gc = pos >> g.bits
            let inOff = pos & (g.cs - 1)
            let n = Int(min(g.cs - inOff, UInt64(buffer.count - done)))
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[done..<done + n])
            if n == Int(g.cs) {
                try writeFullCluster(gc, chunk)
                done += n
                continue
            }
            let host = try quick { (m) throws(DiskError) -> UInt64? in
                if let h = try m.inPlaceHost(gc, inOff, UInt64(n)) { return h }
                try m.allocatingWrite(gc, Int(inOff), chunk)
                return nil
            }
            if let h = host { try file.pwrite(chunk, at: h) }
            done += n
        }
    }

    /// A whole-cluster write: no copy-on-write, so a fresh cluster's data goes out without the lock held.
    func writeFullCluster(_ gc: UInt64, _ chunk: UnsafeRawBufferPointer) throws(DiskError) {
        while true {
            let step = try quick { (m) throws(DiskError) -> Meta.FullWrite in try m.beginFullWrite(gc) }
            switch step {
            case .busy:
                sched_yield()
                continue
            case .inPlace(let h):
                try file.pwrite(chunk, at: h)
            case .locked:
                try quick { (m) throws(DiskError) in try m.allocatingWrite(gc, 0, chunk) }
            case .fresh(let host, let l2off):
                var failure: DiskError? = nil
                do { try file.pwrite(chunk, at: host) } catch { failure = error }
                let ok = failure == nil
                try quick { (m) throws(DiskError) in try m.publishFullWrite(gc, host: host, l2off: l2off, ok: ok) }
                if let f = failure { throw f }
            }
            return
        }
    }

    public func flush() throws(DiskError) {
        try meta.withLock { (m) throws(DiskError) in try m.syncAndClean() }
    }

    public func discard(at offset: UInt64, length: UInt64) throws(DiskError) {
        try clear(offset, length, mode: .discard)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64) throws(DiskError) {
        guard writable else { throw .readOnly("image opened read-only") }
        try checkRange(offset, Int(clamping: length))
        if !g.v3 && backing != nil {
            // v2 has no zero flag: write real zeros.
            try writeZeroBytes(offset, length)
            return
        }
        let start = (offset + g.cs - 1) & ~(g.cs - 1)
        let end = min((offset + length) & ~(g.cs - 1), virtualSize)
        if start >= end {
            try writeZeroBytes(offset, length)
            return
        }
        if start > offset { try writeZeroBytes(offset, start - offset) }
        try clear(start, end - start, mode: .zero)
        if offset + length > end { try writeZeroBytes(end, offset + length - end) }
    }

    func writeZeroBytes(_ offset: UInt64, _ length: UInt64) throws(DiskError) {
        let z = [UInt8](repeating: 0, count: Int(min(length, 1 << 20)))
        var o = offset
        while o < offset + length {
            let n = Int(min(UInt64(z.count), offset + length - o))
            try ro(z) { (b) throws(DiskError) in try write(at: o, from: UnsafeRawBufferPointer(rebasing: b[0..<n])) }
            o += UInt64(n)
        }
    }

    func clear(_ offset: UInt64, _ length: UInt64, mode: Meta.ClearMode) throws(DiskError) {
        guard writable else { throw .readOnly("image opened read-only") }
        try checkRange(offset, Int(clamping: length))
        let first = (offset + g.cs - 1) >> g.bits
        var last = (offset + length) >> g.bits  // exclusive
        // The partial cluster at the very end of the disk counts as whole.
        if offset + length == virtualSize && virtualSize & (g.cs - 1) != 0 { last += 1 }
        if first >= last { return }
        let hasBacking = backing != nil
        try meta.withLock { (m) throws(DiskError) in
            for gc in first..<last { try m.clearCluster(gc, mode: mode, hasBacking: hasBacking) }
            if m.compressedFreed { m.compressedFreed = false; ccache.reset() }
        }
    }

    // MARK: resize

    public func resize(to newSize: UInt64, allowShrink: Bool = true) throws(DiskError) {
        guard writable else { throw .readOnly("image opened read-only") }
        guard newSize <= QC.maxVirtualSize else { throw .invalidArgument("size \(newSize) is too large") }
        let old = virtualSize
        if newSize < old {
            guard allowShrink else { throw .invalidArgument("shrinking needs --shrink") }
            guard snapshots.isEmpty else { throw .unsupported("cannot shrink an image that has internal snapshots") }
            // Zero the tail of the last partial cluster, then free everything past it.
            let tailStart = newSize, tailEnd = min((newSize + g.cs - 1) & ~(g.cs - 1), old)
            if tailEnd > tailStart { try writeZeroBytes(tailStart, tailEnd - tailStart) }
            if tailEnd < old { try clear(tailEnd, old - tailEnd, mode: .unallocate) }
        }
        try meta.withLock { (m) throws(DiskError) in
            // The bitmaps' tables are sized for the old size.
            if m.bitmapsValidOnDisk && newSize != old { try m.invalidateBitmaps() }
            let need = Int(m.header.l1EntriesNeeded(for: newSize))
            if need > m.l1.count {
                guard UInt64(need) * 8 <= QC.maxL1Bytes else { throw .invalidArgument("size \(newSize) needs an L1 table above the limit") }
                var t = m.l1
                t.append(contentsOf: repeatElement(0, count: need - t.count))
                let oldOff = m.header.l1TableOffset, oldBytes = UInt64(m.l1.count) * 8
                let off = try m.writeNewTable(Meta.l1Bytes(t))
                var hb = [UInt8]()
                hb.append64(newSize)
                hb.append32(0)
                hb.append32(UInt32(need))
                hb.append64(off)
                try m.writeHeaderFields(24, hb)
                m.header.size = newSize
                m.header.l1Size = UInt32(need)
                m.header.l1TableOffset = off
                m.l1 = t
                try m.freeClusters(oldOff, bytes: oldBytes)
            } else {
                if need < m.l1.count && newSize < old {
                    // Free L2 tables wholly past the end.
                    for i in need..<m.l1.count where m.l1[i] & QC.l1OffsetMask != 0 {
                        let off = m.l1[i] & QC.l1OffsetMask
                        try m.writeL1Entry(i, 0)
                        try m.release(cluster: off)
                    }
                }
                var hb = [UInt8]()
                hb.append64(newSize)
                try m.writeHeaderFields(24, hb)
                m.header.size = newSize
            }
        }
        sizeValue.store(newSize, ordering: .relaxed)
    }

    // MARK: snapshots

    func findSnapshot(_ m: Meta, _ key: String) -> Int? {
        m.snapshots.firstIndex { $0.id == key } ?? m.snapshots.firstIndex { $0.name == key }
    }

    /// Creates an internal snapshot of the current disk state.
    public func createSnapshot(name: String, dateSec: UInt32? = nil) throws(DiskError) {
        guard writable else { throw .readOnly("image opened read-only") }
        guard !name.isEmpty, name.utf8.count < 65536 else { throw .invalidArgument("snapshot name must be 1...65535 bytes") }
        try meta.withLock { (m) throws(DiskError) in
            if m.snapshots.contains(where: { $0.name == name }) { throw .invalidArgument("a snapshot named '\(name)' already exists") }
            guard m.snapshots.count < Int(QC.maxSnapshots) else { throw .unsupported("too many snapshots") }
            let nextID = (m.snapshots.compactMap { Int($0.id) }.max() ?? 0) + 1
            guard m.maxRefcount >= 2 else {
                throw .unsupported("snapshots need refcounts of at least 2 bits (this image has 1-bit refcounts)")
            }
            // 1. Clear COPIED first: a crash then costs copies, never an in-place write into shared data.
            try m.fixCopied(clearOnly: true)
            // 2. Copy the L1 table.
            let copy = m.l1.map { $0 & ~QC.copied }
            let l1Off = m.l1.isEmpty ? 0 : try m.writeNewTable(Meta.l1Bytes(copy))
            // 3. Every cluster reachable from it gains a reference.
            do throws(DiskError) { try m.updateTree(m.l1, 1) } catch {
                m.discardDeferred()
                _ = try? m.fixCopied()
                try? m.freeClusters(l1Off, bytes: UInt64(copy.count) * 8)
                throw error
            }
            // 4. Publish it.
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            let s = Qcow2Snapshot(
                l1TableOffset: l1Off, l1Size: UInt32(m.l1.count), id: String(nextID), name: name,
                dateSec: dateSec ?? UInt32(truncatingIfNeeded: ts.tv_sec), dateNsec: UInt32(ts.tv_nsec),
                vmClockNsec: 0, vmStateSize: 0, diskSize: m.header.size, icount: nil)
            try m.replaceSnapshotTable(m.snapshots + [s])
            try m.fixCopied()
            try m.syncAndClean()
        }
    }

    /// Deletes a snapshot by id or name.
    public func deleteSnapshot(_ key: String) throws(DiskError) {
        guard writable else { throw .readOnly("image opened read-only") }
        try meta.withLock { (m) throws(DiskError) in
            guard let i = findSnapshot(m, key) else { throw .invalidArgument("no snapshot '\(key)'") }
            try m.willWriteGuestData()
            let s = m.snapshots[i]
            let table = try m.readL1(s.l1TableOffset, Int(s.l1Size))
            var list = m.snapshots
            list.remove(at: i)
            try m.replaceSnapshotTable(list)
            try m.updateTree(table, -1)
            try m.freeClusters(s.l1TableOffset, bytes: UInt64(s.l1Size) * 8)
            try m.fixCopied()
            try m.syncAndClean()
        }
    }

    /// Reverts the disk to a snapshot.
    public func applySnapshot(_ key: String) throws(DiskError) {
        guard writable else { throw .readOnly("image opened read-only") }
        let newSize = try meta.withLock { (m) throws(DiskError) -> UInt64 in
            guard let i = findSnapshot(m, key) else { throw .invalidArgument("no snapshot '\(key)'") }
            try m.willWriteGuestData()
            let s = m.snapshots[i]
            let size = s.diskSize ?? m.header.size
            guard size <= QC.maxVirtualSize, m.header.l1EntriesNeeded(for: size) * 8 <= QC.maxL1Bytes else {
                throw .corrupt("snapshot '\(s.name)' has an invalid disk size \(size)")
            }
            var table = try m.readL1(s.l1TableOffset, Int(s.l1Size))
            let need = Int(m.header.l1EntriesNeeded(for: size))
            if table.count < need { table.append(contentsOf: repeatElement(0, count: need - table.count)) }
            do throws(DiskError) { try m.updateTree(table, 1) } catch { m.discardDeferred(); throw error }
            let newActive = table.map { $0 & ~QC.copied }
            let oldActive = m.l1
            let oldOff = m.header.l1TableOffset
            let oldClusters = (UInt64(oldActive.count) * 8 + m.cs - 1) / m.cs
            let newClusters = (UInt64(newActive.count) * 8 + m.cs - 1) / m.cs
            if newClusters <= oldClusters && oldOff != 0 {
                var bytes = Meta.l1Bytes(newActive)
                bytes.append(contentsOf: repeatElement(0, count: Int(oldClusters * m.cs) - bytes.count))
                try m.file.writeBytes(bytes, at: oldOff)
                var hb = [UInt8]()
                hb.append64(size)
                hb.append32(0)
                hb.append32(UInt32(newActive.count))
                try m.writeHeaderFields(24, hb)
            } else {
                let off = try m.writeNewTable(Meta.l1Bytes(newActive))
                var hb = [UInt8]()
                hb.append64(size)
                hb.append32(0)
                hb.append32(UInt32(newActive.count))
                hb.append64(off)
                try m.writeHeaderFields(24, hb)
                m.header.l1TableOffset = off
                try m.freeClusters(oldOff, bytes: oldClusters * m.cs)
            }
            m.header.size = size
            m.header.l1Size = UInt32(newActive.count)
            m.l1 = newActive
            try m.updateTree(oldActive, -1)
            try m.fixCopied()
            try m.syncAndClean()
            return size
        }
        sizeValue.store(newSize, ordering: .relaxed)
        ccache.reset()
    }

    // MARK: check

    /// Checks the metadata; `repair` fixes refcounts and COPIED flags (everything `RepairMode.all` fixes).
    public func check(repair: Bool = false) throws(DiskError) -> CheckResult {
        try check(repairing: repair ? .all : nil)
    }

    /// Checks the metadata as `qemu-img check` does, repairing what `repairing` allows.
    public func check(repairing: RepairMode?) throws(DiskError) -> CheckResult {
        if repairing != nil && !writable { throw .readOnly("repair needs the image opened for writing") }
        return try meta.withLock { (m) throws(DiskError) -> CheckResult in
            let r = try Checker.run(&m, repair: repairing)
            if repairing != nil { try m.syncAndClean() }
            return r
        }
    }

    // MARK: status

    public enum Status: Sendable, Equatable { case data(host: UInt64), compressed, zero, unallocated }

    /// Allocation status of the guest range starting at `offset` in this image only (not its backing file):
    /// the status and how many bytes share it (within one cluster).
    public func status(at offset: UInt64) throws(DiskError) -> (Status, UInt64) {
        try meta.withLock { (m) throws(DiskError) -> (Status, UInt64) in
            let segs = try m.map(offset, Int(min(m.cs - (offset & (m.cs - 1)), virtualSize - offset)))
            let s = segs[0]
            switch s.kind {
            case .data(let h): return (.data(host: h), UInt64(s.length))
            case .zero: return (.zero, UInt64(s.length))
            case .backing: return (.unallocated, UInt64(s.length))
            case .compressed: return (.compressed, UInt64(s.length))
            }
        }
    }

    // MARK: compressed writes (convert -c)

    /// Writes one whole guest cluster compressed. The cluster must be unallocated (a fresh image).
    public func writeCompressed(cluster gc: UInt64, data: UnsafeRawBufferPointer) throws(DiskError) {
        guard writable else { throw .readOnly("image opened read-only") }
        guard data.count == Int(g.cs) else { throw .invalidArgument("compressed writes take whole clusters") }
        guard !g.zstd else { throw .unsupported("writing zstd-compressed clusters") }
        guard let z = Codec.deflateRaw(data, limit: Int(g.cs) - 512) else {
            try write(at: gc << g.bits, from: UnsafeRawBufferPointer(rebasing: data[0..<Int(min(g.cs, virtualSize - (gc << g.bits)))]))
            return
        }
        try meta.withLock { (m) throws(DiskError) in
            let l2off = try m.writableL2(Int(gc / m.g.l2Entries))
            let (old, _) = try m.lookup(gc)
            guard old == 0 else { throw .invalidArgument("compressed writes need an unallocated cluster") }
            let len = UInt64(z.count)
            var off = m.compCursor
            // Pack blobs into the current cluster while they fit; otherwise start a new one at the end.
            if off == 0 || off & (m.cs - 1) == 0 || (off & (m.cs - 1)) + len > m.cs {
                off = try m.appendClusters(1) * m.cs
            } else {
                try m.addRef(off >> m.g.bits, 1)
            }
            try m.willWriteGuestData()
            try m.checkOverlap(off, len)
            try m.file.writeBytes(z, at: off)
            let end = off + len
            // Keep the file covering the last touched cluster.
            m.compCursor = end
            let nb = ((end - 1) >> 9) - (off >> 9)
            let e = QC.compressed | (nb << m.g.csizeShift) | off
            try m.setL2(l2off, Int(gc % m.g.l2Entries), e, 0)
        }
    }

    /// Makes the file cover every allocated cluster (after compressed writes).
    public func finishWrites() throws(DiskError) {
        try meta.withLock { (m) throws(DiskError) in
            let want = m.endCluster * m.cs
            if try m.file.size() < want { try m.file.truncate(want) }
        }
        try flush()
    }

    // MARK: header edits (rebase)

    /// Points the image at a new backing file (header only).
    public func setBacking(_ name: String?, format: ImageFormat?) throws(DiskError) {
        guard writable else { throw .readOnly("image opened read-only") }
        try meta.withLock { (m) throws(DiskError) in
            var h = m.header
            h.backingFile = name
            h.backingFormat = name == nil ? nil : (format ?? .raw).rawValue
            _ = try h.serialize()
            m.header = h
            try m.rewriteHeader()
            try m.syncAndClean()
        }
    }
}

/// Throws unless the file at `path`, if there is one, may be replaced by a new image.
func checkReplaceable(_ path: String) throws(DiskError) {
    guard let existing = FileIdentity(path: path) else { return }
    if OpenImages.contains(existing) {
        throw .refused("the output \(path) is an image being read (the same file); choose another output path")
    }
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else { return }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return }
    do throws(DiskError) { try ImageLock.testWritable(fd: fd, path: path) } catch {
        if case .inUse(let s, _) = error { throw .inUse("the output \(path): \(s)", readOnly: false) }
        throw error
    }
}

/// Makes a rename in `path`'s directory durable.
func syncDirectory(of path: String) {
    let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
    let fd = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return }
    fsync(fd)
    close(fd)
}

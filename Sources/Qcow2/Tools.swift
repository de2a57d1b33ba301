#if canImport(Glibc)
import Glibc
#endif
import Synchronization

// MARK: JSON output (no Foundation)

/// A JSON value rendered the way `qemu-img --output=json` lays it out (4-space indent).
public indirect enum JSON: Sendable, Equatable {
    case object([(String, JSON)])
    case array([JSON])
    case string(String)
    case int(Int64)
    case bool(Bool)
    case double(Double)

    public static func == (a: JSON, b: JSON) -> Bool { a.render() == b.render() }

    public static func uint(_ v: UInt64) -> JSON { .int(Int64(bitPattern: v)) }

    public func render(_ indent: Int = 0) -> String {
        let pad = String(repeating: " ", count: indent + 4), close = String(repeating: " ", count: indent)
        switch self {
        case .object(let kv):
            if kv.isEmpty { return "{}" }
            return "{\n" + kv.map { pad + JSON.quote($0.0) + ": " + $0.1.render(indent + 4) }.joined(separator: ",\n") + "\n" + close + "}"
        case .array(let a):
            // qemu's pretty printer puts an empty list's bracket on a line of its own.
            if a.isEmpty { return "[\n" + close + "]" }
            return "[\n" + a.map { pad + $0.render(indent + 4) }.joined(separator: ",\n") + "\n" + close + "]"
        case .string(let s): return JSON.quote(s)
        case .int(let i): return String(i)
        case .bool(let b): return b ? "true" : "false"
        case .double(let d): return String(d)
        }
    }

    static func quote(_ s: String) -> String {
        var o = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": o += "\\\""
            case "\\": o += "\\\\"
            case "\n": o += "\\n"
            case "\r": o += "\\r"
            case "\t": o += "\\t"
            default:
                if u.value < 0x20 { o += "\\u00" + (u.value < 16 ? "0" : "") + String(u.value, radix: 16) } else { o.unicodeScalars.append(u) }
            }
        }
        return o + "\""
    }
}

// MARK: info

public func imageInfo(path: String, forceShare: Bool = false) throws(DiskError) -> JSON {
    let f = try PosixFile(path: path, writable: false, forceShare: forceShare)
    let fmt = try probeFormat(f)
    var kv: [(String, JSON)] = []
    switch fmt {
    case .raw:
        kv = [("virtual-size", .uint(try f.size())), ("filename", .string(path)), ("format", .string("raw")),
              ("actual-size", .uint(f.allocatedBytes())), ("dirty-flag", .bool(false))]
    case .qcow2:
        var o = Qcow2OpenOptions()
        o.openBacking = false
        let img = try Qcow2Image(file: f, path: path, options: o)
        let h = img.header
        if h.backingFile != nil, let bf = h.backingFormat { kv.append(("backing-filename-format", .string(bf))) }
        let snaps = img.snapshots
        if !snaps.isEmpty {
            kv.append(("snapshots", .array(snaps.map { s in
                var e: [(String, JSON)] = []
                // qemu-img leaves icount out for snapshots that do not record one.
                if let icount = s.icount { e.append(("icount", .uint(icount))) }
                e += [("vm-clock-nsec", .uint(s.vmClockNsec % 1_000_000_000)), ("name", .string(s.name)),
                      ("date-sec", .uint(UInt64(s.dateSec))), ("date-nsec", .uint(UInt64(s.dateNsec))),
                      ("vm-clock-sec", .uint(s.vmClockNsec / 1_000_000_000)), ("id", .string(s.id)),
                      ("vm-state-size", .uint(s.vmStateSize))]
                return .object(e)
            })))
        }
        kv += [("virtual-size", .uint(h.size)), ("filename", .string(path)), ("cluster-size", .uint(h.clusterSize)),
               ("format", .string("qcow2")), ("actual-size", .uint(f.allocatedBytes()))]
        var data: [(String, JSON)] = [("compat", .string(h.version >= 3 ? "1.1" : "0.10")),
                                      ("compression-type", .string(h.compressionType == 1 ? "zstd" : "zlib"))]
        if h.version >= 3 { data.append(("lazy-refcounts", .bool(h.compatibleFeatures & QC.compatLazyRefcounts != 0))) }
        let bitmaps = try img.bitmaps
        if !bitmaps.isEmpty { data.append(("bitmaps", bitmapsJSON(bitmaps))) }
        data.append(("refcount-bits", .uint(UInt64(h.refcountBits))))
        if h.version >= 3 {
            data.append(("corrupt", .bool(h.incompatibleFeatures & QC.incompatCorrupt != 0)))
            data.append(("extended-l2", .bool(h.extendedL2)))
        }
        kv.append(("format-specific", .object([("type", .string("qcow2")), ("data", .object(data))])))
        if let b = h.backingFile {
            kv.append(("full-backing-filename", .string(resolveBacking(b, relativeTo: path))))
            kv.append(("backing-filename", .string(b)))
        }
        kv.append(("dirty-flag", .bool(h.incompatibleFeatures & QC.incompatDirty != 0)))
    }
    return .object(kv)
}

/// One image of a backing chain, as `info --backing-chain` lists it.
public struct ChainImageInfo: Sendable {
    public var path: String
    public var json: JSON
    public var snapshots: [Qcow2Snapshot]
}

/// `info` of `path` and, with `backingChain`, of every image below it, top first.
public func imageInfoChain(path: String, backingChain: Bool, forceShare: Bool = false) throws(DiskError) -> [ChainImageInfo] {
    var out: [ChainImageInfo] = []
    var next: String? = path
    while let p = next {
        guard out.count < 32 else { throw .corrupt("backing chain is deeper than 32 images") }
        if out.contains(where: { canonicalPath($0.path) == canonicalPath(p) }) { throw .corrupt("backing chain loops back to \(p)") }
        let json = try imageInfo(path: p, forceShare: forceShare)
        var snapshots: [Qcow2Snapshot] = []
        next = nil
        let f = try PosixFile(path: p, writable: false, forceShare: forceShare)
        if try probeFormat(f) == .qcow2 {
            var o = Qcow2OpenOptions()
            o.openBacking = false
            let img = try Qcow2Image(file: f, path: p, options: o)
            snapshots = img.snapshots
            if backingChain, let b = img.header.backingFile { next = resolveBacking(b, relativeTo: p) }
        }
        out.append(ChainImageInfo(path: p, json: json, snapshots: snapshots))
    }
    return out
}

// MARK: map

public struct MapExtent: Sendable, Equatable {
    public var start: UInt64
    public var length: UInt64
    public var depth: Int
    public var present: Bool
    public var zero: Bool
    public var data: Bool
    public var offset: UInt64?
    public var file: String?
}

/// lseek(2) whences Glibc's Swift overlay does not export.
let seekData: Int32 = 3, seekHole: Int32 = 4

/// Whether the bytes of a raw file at `offset` hold data or lie in a hole, and for how many bytes (SEEK_DATA/SEEK_HOLE).
func rawAllocation(_ file: any FileIO, at offset: UInt64, limit: UInt64) -> (data: Bool, length: UInt64) {
    guard let posix = file as? PosixFile else { return (true, limit - offset) }
    let dataStart = lseek(posix.fd, off_t(offset), seekData)
    if dataStart < 0 { return errno == ENXIO ? (false, limit - offset) : (true, limit - offset) }
    if UInt64(dataStart) > offset { return (false, min(UInt64(dataStart), limit) - offset) }
    let holeStart = lseek(posix.fd, off_t(offset), seekHole)
    if holeStart < 0 || UInt64(holeStart) <= offset { return (true, limit - offset) }
    return (true, min(UInt64(holeStart), limit) - offset)
}

/// The allocation map through the backing chain, merged like `qemu-img map`.
public func imageMap(path: String, forceShare: Bool = false) throws(DiskError) -> [MapExtent] {
    try imageMap(device: openImage(path: path, forceShare: forceShare), path: path)
}

/// The allocation map of an open image (`path` names it in the extents).
public func imageMap(device: any BlockBackend, path: String) throws(DiskError) -> [MapExtent] {
    var chain: [(dev: any BlockBackend, path: String)] = []
    var dev = device
    var p = path
    while true {
        chain.append((dev, p))
        guard let q = dev as? Qcow2Image, let b = q.backing, let name = q.header.backingFile else { break }
        p = resolveBacking(name, relativeTo: p)
        dev = b
    }
    let size = chain[0].dev.virtualSize
    var out: [MapExtent] = []
    var pos: UInt64 = 0
    while pos < size {
        var ext = MapExtent(start: pos, length: 0, depth: 0, present: false, zero: true, data: false, offset: nil, file: nil)
        var len = size - pos
        for (d, link) in chain.enumerated() {
            ext.depth = d
            if pos >= link.dev.virtualSize { ext.present = false; ext.zero = true; ext.data = false; len = min(len, size - pos); break }
            if let q = link.dev as? Qcow2Image {
                let (st, n) = try q.status(at: pos)
                len = min(len, n)
                switch st {
                case .unallocated: if d == chain.count - 1 { ext.present = false; ext.zero = true }; continue
                case .zero: ext.present = true; ext.zero = true
                case .data(let h): ext.present = true; ext.zero = false; ext.data = true; ext.offset = h; ext.file = link.path
                case .compressed: ext.present = true; ext.zero = false; ext.data = true
                }
                break
            } else if let raw = link.dev as? RawBackend {
                let (data, n) = rawAllocation(raw.file, at: pos, limit: raw.virtualSize)
                len = min(len, n)
                ext.present = true; ext.zero = !data; ext.data = data; ext.offset = pos; ext.file = link.path
                break
            }
        }
        ext.length = len
        if var last = out.last, last.depth == ext.depth, last.present == ext.present, last.zero == ext.zero,
           last.data == ext.data, last.file == ext.file,
           (last.offset == nil && ext.offset == nil) || (last.offset != nil && ext.offset == last.offset! + last.length) {
            last.length += len
            out[out.count - 1] = last
        } else {
            out.append(ext)
        }
        pos += len
    }
    return out
}

public func mapJSON(_ m: [MapExtent]) -> String {
    "[" + m.map { e in
        var s = "{ \"start\": \(e.start), \"length\": \(e.length), \"depth\": \(e.depth), \"present\": \(e.present), \"zero\": \(e.zero), \"data\": \(e.data)"
        if let o = e.offset { s += ", \"offset\": \(o)" }
        return s + "}"
    }.joined(separator: ",\n") + "]"
}

/// `qemu-img map` human output: the ranges that hold data, with where they are stored.
public func mapHuman(_ m: [MapExtent]) -> String {
    var out = "Offset          Length          Mapped to       File\n"
    for e in m where e.data {
        guard let o = e.offset, let f = e.file else { continue }
        out += padded(cFormat("%#llx", e.start), 16) + padded(cFormat("%#llx", e.length), 16) + padded(cFormat("%#llx", o), 16) + f + "\n"
    }
    return out
}

// MARK: check JSON

public func checkJSON(_ r: CheckResult, path: String) -> JSON {
    var kv: [(String, JSON)] = [("image-end-offset", .uint(r.imageEndOffset)), ("total-clusters", .uint(r.totalClusters)),
                                ("check-errors", .int(Int64(r.checkErrors)))]
    if r.leaks > 0 { kv.append(("leaks", .int(Int64(r.leaks)))) }
    if r.corruptions > 0 { kv.append(("corruptions", .int(Int64(r.corruptions)))) }
    if r.leaksFixed > 0 { kv.append(("leaks-fixed", .int(Int64(r.leaksFixed)))) }
    if r.corruptionsFixed > 0 { kv.append(("corruptions-fixed", .int(Int64(r.corruptionsFixed)))) }
    kv += [("allocated-clusters", .uint(r.allocatedClusters)), ("filename", .string(path)), ("format", .string("qcow2"))]
    if r.fragmentedClusters > 0 { kv.append(("fragmented-clusters", .uint(r.fragmentedClusters))) }
    if r.compressedClusters > 0 { kv.append(("compressed-clusters", .uint(r.compressedClusters))) }
    return .object(kv)
}

// MARK: convert

public struct ConvertOptions: Sendable {
    /// The output's format (`tern image convert` defaults to raw, as qemu-img does).
    public var format: ImageFormat = .qcow2
    public var compress = false
    public var create: Qcow2CreateOptions = Qcow2CreateOptions(size: 0)
    /// qcow2 output compresses with zstd instead of deflate.
    public var zstd = false
    /// Zero runs of at least this many bytes stay unallocated (qemu-img -S); 0 writes every byte.
    public var sparseSize: UInt64 = 4096
    /// Writes into an existing image instead of creating one (qemu-img -n).
    public var existingTarget = false
    /// Copies only what the source's top image holds; the output's backing file supplies the rest (qemu-img -B).
    public var topOnly = false
    /// How the output uses the host's page cache (qemu-img -t).
    public var cache: CacheMode = .writeback
    public init() {}
}

@inline(__always) func isZero(_ b: UnsafeRawBufferPointer) -> Bool {
    var i = 0
    let n = b.count
    while i + 8 <= n {
        if b.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
        i += 8
    }
    while i < n { if b[i] != 0 { return false }; i += 1 }
    return true
}

/// Copies `source` into the image at `path`: a new one (see `writeOutput` for what happens to an existing
/// file, link or device there), or with `existingTarget` the existing image, which must be large enough.
public func convert(_ source: any BlockBackend, to path: String, options: ConvertOptions,
                    progress: ProgressMeter = ProgressMeter(.off)) throws(DiskError) {
    let size = source.virtualSize
    if options.existingTarget {
        let target = try openImage(path: path, format: options.format, writable: true, cache: options.cache)
        guard target.virtualSize >= size else {
            throw .invalidArgument("\(path) holds \(target.virtualSize) bytes, less than the source's \(size); resize it first")
        }
        try copyImage(source, into: target, options, zeroed: false, progress)
        if let q = target as? Qcow2Image { try q.finishWrites() } else { try target.flush() }
        return
    }
    try writeOutput(path, size: options.format == .raw ? size : nil, cache: options.cache) { (out) throws(DiskError) in
        switch options.format {
        case .raw:
            if !out.isDevice {
                try out.file.truncate(size)
                if options.create.preallocation == .full && size > 0 { try out.file.allocate(at: 0, length: size) }
            }
            try copyImage(source, into: RawBackend(file: out.file), options, zeroed: out.startsZeroed, progress)
        case .qcow2:
            let file = try out.imageFile()
            var co = options.create
            co.size = size
            try Qcow2Image.create(file: file, options: co)
            if options.zstd { try setCompressionType(zstd: true, in: file) }
            var o = Qcow2OpenOptions(writable: true)
            o.openBacking = false
            let img = try Qcow2Image(file: file, path: nil, options: o)
            try copyImage(source, into: img, options, zeroed: true, progress)
            try img.finishWrites()
        }
    }
}

/// The copy loop of `convert`: data goes out in runs, zeros are skipped on a zeroed target (or written as
/// zeroes otherwise), unless `sparseSize` is 0.
func copyImage(_ source: any BlockBackend, into target: any BlockBackend, _ o: ConvertOptions, zeroed: Bool,
               _ progress: ProgressMeter) throws(DiskError) {
    let size = source.virtualSize
    let qcowTarget = target as? Qcow2Image
    let topSource = o.topOnly ? source as? Qcow2Image : nil
    let cluster = Int(qcowTarget?.clusterSize ?? 65536)
    // Zero detection works on target clusters for qcow2 and on the sparse size for raw.
    let block = qcowTarget != nil ? cluster : Int(max(512, o.sparseSize == 0 ? 4096 : o.sparseSize))
    let chunk = o.compress ? cluster : max(block, (1 << 20) / block * block)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
    defer { buffer.deallocate() }
    progress.update(0, of: size)
    var pos: UInt64 = 0
    while pos < size {
        var n = Int(min(UInt64(chunk), size - pos))
        if let top = topSource {
            let (status, length) = try top.status(at: pos)
            if status == .unallocated {
                pos += length
                progress.update(pos, of: size)
                continue
            }
            n = min(n, Int(length))
        }
        let data = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
        try source.read(at: pos, into: data)
        if o.compress, let img = qcowTarget {
            if isZero(UnsafeRawBufferPointer(data)) {
                if !zeroed { try target.writeZeroes(at: pos, length: UInt64(n)) }
            } else {
                if n < cluster { (buffer.baseAddress! + n).initializeMemory(as: UInt8.self, repeating: 0, count: cluster - n) }
                try img.writeCompressed(cluster: pos / UInt64(cluster), data: UnsafeRawBufferPointer(rebasing: buffer[0..<cluster]))
            }
        } else {
            try writeRuns(UnsafeRawBufferPointer(data), at: pos, into: target, block: block,
                          skipZeros: o.sparseSize != 0, zeroed: zeroed)
        }
        pos += UInt64(n)
        progress.update(pos, of: size)
    }
}

/// Writes `data` at `offset` in runs of blocks that are all data or all zero.
func writeRuns(_ data: UnsafeRawBufferPointer, at offset: UInt64, into target: any BlockBackend, block: Int,
               skipZeros: Bool, zeroed: Bool) throws(DiskError) {
    var runStart = 0, runIsZero = false, i = 0
    func flush(_ end: Int) throws(DiskError) {
        guard end > runStart else { return }
        if !runIsZero {
            try target.write(at: offset + UInt64(runStart), from: UnsafeRawBufferPointer(rebasing: data[runStart..<end]))
        } else if !zeroed {
            try target.writeZeroes(at: offset + UInt64(runStart), length: UInt64(end - runStart))
        }
    }
    while i < data.count {
        let end = min(i + block, data.count)
        let zero = skipZeros && isZero(UnsafeRawBufferPointer(rebasing: data[i..<end]))
        if i == 0 { runIsZero = zero } else if zero != runIsZero {
            try flush(i)
            runStart = i
            runIsZero = zero
        }
        i = end
    }
    try flush(data.count)
}

// MARK: commit and rebase

func openQcow2(_ path: String, writable: Bool, openBacking: Bool = true) throws(DiskError) -> Qcow2Image {
    let f = try PosixFile(path: path, writable: writable)
    guard try probeFormat(f) == .qcow2 else { throw .invalidArgument("\(path) is not a qcow2 image") }
    var o = Qcow2OpenOptions(writable: writable)
    o.openBacking = openBacking
    return try Qcow2Image(file: f, path: path, options: o)
}

/// Writes every cluster the images above `base` hold into `base` (default: the top image's backing file),
/// then, unless `keepTop` or a base is named, empties the top image.
public func commit(path: String, base: String? = nil, keepTop: Bool = false,
                   progress: ProgressMeter = ProgressMeter(.off)) throws(DiskError) {
    let emptyTop = !keepTop && base == nil
    // Each image above the base is opened on its own, its backing chain closed, so that the base can be locked
    // for writing; each range is read from the topmost image that holds it.
    let top = try openQcow2(path, writable: emptyTop, openBacking: false)
    guard let topBacking = top.header.backingFile else { throw .invalidArgument("\(path) has no backing file to commit into") }
    var above: [Qcow2Image] = [top]
    var basePath = resolveBacking(topBacking, relativeTo: path)
    var baseFormat = top.header.backingFormat.flatMap { ImageFormat(rawValue: $0) }
    if let wanted = base {
        let target = canonicalPath(wanted)
        while canonicalPath(basePath) != target {
            guard baseFormat != .raw, above.count < 32 else { throw .invalidArgument("\(wanted) is not in the backing chain of \(path)") }
            let next = try openQcow2(basePath, writable: false, openBacking: false)
            guard let name = next.header.backingFile else { throw .invalidArgument("\(wanted) is not in the backing chain of \(path)") }
            above.append(next)
            basePath = resolveBacking(name, relativeTo: basePath)
            baseFormat = next.header.backingFormat.flatMap { ImageFormat(rawValue: $0) }
        }
    }
    let baseDevice = try openImage(path: basePath, format: baseFormat, writable: true)
    if baseDevice.virtualSize < top.virtualSize {
        if let q = baseDevice as? Qcow2Image { try q.resize(to: top.virtualSize) }
        else if let r = baseDevice as? RawBackend { try r.file.truncate(top.virtualSize) }
    }
    // A raw base is reopened to see its new size.
    let target: any BlockBackend = try (baseDevice as? RawBackend).map { (r) throws(DiskError) in try RawBackend(file: r.file) } ?? baseDevice
    var buf = [UInt8](repeating: 0, count: Int(above.map(\.clusterSize).max()!))
    var pos: UInt64 = 0
    let size = top.virtualSize
    progress.update(0, of: size)
    while pos < size {
        var n = size - pos
        var holder: (image: Qcow2Image, status: Qcow2Image.Status)? = nil
        for image in above where pos < image.virtualSize {
            let (s, length) = try image.status(at: pos)
            n = min(n, length)
            if holder == nil && s != .unallocated { holder = (image, s) }
        }
        switch holder {
        case nil: break
        case (_, .zero)?: try target.writeZeroes(at: pos, length: n)
        case (let image, _)?:
            try rw(&buf) { (b) throws(DiskError) in
                let s = UnsafeMutableRawBufferPointer(rebasing: b[0..<Int(n)])
                try image.read(at: pos, into: s)
                try target.write(at: pos, from: UnsafeRawBufferPointer(s))
            }
        }
        pos += n
        progress.update(pos, of: size)
    }
    try target.flush()
    if emptyTop {
        try top.clear(0, size, mode: .unallocate)
        try top.flush()
    }
}

/// Changes the backing file. Unless `unsafe`, first copies into the top image every cluster whose
/// contents would change, so the guest-visible data stays the same.
public func rebase(path: String, newBacking: String?, format: ImageFormat?, unsafe: Bool,
                   progress: ProgressMeter = ProgressMeter(.off)) throws(DiskError) {
    // Unsafe mode touches only the header, so the old backing file need not exist.
    let top = try openQcow2(path, writable: true, openBacking: !unsafe)
    if !unsafe {
        let newDev: (any BlockBackend)? = try newBacking.map { (n) throws(DiskError) in
            try openImage(path: resolveBacking(n, relativeTo: path), format: format)
        }
        let cs = Int(top.clusterSize)
        var a = [UInt8](repeating: 0, count: cs), b = [UInt8](repeating: 0, count: cs)
        var pos: UInt64 = 0
        let size = top.virtualSize
        progress.update(0, of: size)
        while pos < size {
            let (st, n) = try top.status(at: pos)
            if st == .unallocated {
                let len = Int(n)
                try rw(&a) { (pa) throws(DiskError) in
                    try rw(&b) { (pb) throws(DiskError) in
                        let sa = UnsafeMutableRawBufferPointer(rebasing: pa[0..<len])
                        let sb = UnsafeMutableRawBufferPointer(rebasing: pb[0..<len])
                        try top.read(at: pos, into: sa)
                        if let d = newDev { try readClamped(d, at: pos, into: sb) } else { sb.initializeMemory(as: UInt8.self, repeating: 0) }
                        if memcmp(sa.baseAddress!, sb.baseAddress!, len) != 0 {
                            try top.write(at: pos, from: UnsafeRawBufferPointer(sa))
                        }
                    }
                }
            }
            pos += n
            progress.update(pos, of: size)
        }
        try top.flush()
    }
    try top.setBacking(newBacking, format: newBacking == nil ? nil : (format ?? .raw))
}

// MARK: bench

public struct BenchOptions: Sendable {
    public var count = 75000
    public var depth = 64
    public var bufferSize = 4096
    public var stepSize: UInt64? = nil
    public var offset: UInt64 = 0
    public var write = false
    public var pattern: UInt8 = 0xa5
    public var random = false
    public var flushInterval = 0
    public var threads: Int? = nil
    public init() {}
}

final class BenchShared: @unchecked Sendable {
    let dev: any BlockBackend
    let o: BenchOptions
    let next = Atomic<Int>(0)
    let failed = Atomic<Bool>(false)
    let offsets: [UInt64]
    init(dev: any BlockBackend, o: BenchOptions, offsets: [UInt64]) { self.dev = dev; self.o = o; self.offsets = offsets }

    func work() {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: o.bufferSize, alignment: 4096)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: o.pattern)
        while true {
            let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
            if i >= o.count { return }
            do throws(DiskError) {
                if o.write { try dev.write(at: offsets[i], from: UnsafeRawBufferPointer(buf)) }
                else { try dev.read(at: offsets[i], into: buf) }
                if o.flushInterval > 0 && o.write && (i + 1) % o.flushInterval == 0 { try dev.flush() }
            } catch {
                failed.store(true, ordering: .relaxed)
                return
            }
        }
    }
}

/// Runs a request stream like `qemu-img bench`; returns elapsed seconds. Requests run on
/// `min(depth, threads)` threads (default: one per online CPU), each issuing synchronous I/O.
public func runBench(_ dev: any BlockBackend, _ o: BenchOptions) throws(DiskError) -> Double {
    let size = dev.virtualSize
    guard UInt64(o.bufferSize) <= size, o.bufferSize > 0 else { throw .invalidArgument("buffer size exceeds the image size") }
    let step = o.stepSize ?? UInt64(o.bufferSize)
    var offsets = [UInt64](repeating: 0, count: o.count)
    var off = o.offset
    var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
    let slots = (size - UInt64(o.bufferSize)) / UInt64(o.bufferSize) + 1
    for i in 0..<o.count {
        if o.random {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
            offsets[i] = (rng % slots) * UInt64(o.bufferSize)
        } else {
            offsets[i] = off
            // qemu-img bench: the offset advances by the step and wraps modulo the image size.
            off = (off + step) % size
            if off + UInt64(o.bufferSize) > size { off = 0 }
        }
    }
    let shared = BenchShared(dev: dev, o: o, offsets: offsets)
    let nthreads = max(1, min(o.depth, o.threads ?? Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
    var t0 = timespec(), t1 = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t0)
    var tids: [pthread_t] = []
    for _ in 0..<nthreads {
        var tid = pthread_t()
        let ctx = Unmanaged.passRetained(shared).toOpaque()
        pthread_create(&tid, nil, { p in
            let s = Unmanaged<BenchShared>.fromOpaque(p!).takeRetainedValue()
            s.work()
            return nil
        }, ctx)
        tids.append(tid)
    }
    for t in tids { pthread_join(t, nil) }
    // Like qemu-img bench, the clock stops when the last request completes; the final flush is not timed.
    clock_gettime(CLOCK_MONOTONIC, &t1)
    if o.write { try dev.flush() }
    if shared.failed.load(ordering: .relaxed) { throw .io("a benchmark request failed", errno: EIO) }
    return Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9
}

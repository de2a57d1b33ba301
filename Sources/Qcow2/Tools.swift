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
            if a.isEmpty { return "[]" }
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
                if h.version >= 3 { e.append(("icount", .uint(s.icount ?? 0))) }
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

public func humanSize(_ v: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    var x = Double(v), u = 0
    while x >= 1024 && u < units.count - 1 { x /= 1024; u += 1 }
    if u == 0 { return "\(v) B" }
    let r = (x * 100).rounded() / 100
    let t = r == r.rounded() ? String(Int(r)) : String(r)
    return "\(t) \(units[u])"
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

/// The allocation map through the backing chain, merged like `qemu-img map`.
public func imageMap(path: String, forceShare: Bool = false) throws(DiskError) -> [MapExtent] {
    var chain: [(dev: any BlockBackend, path: String)] = []
    var dev = try openImage(path: path, forceShare: forceShare)
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
            } else {
                len = min(len, link.dev.virtualSize - pos)
                ext.present = true; ext.zero = false; ext.data = true; ext.offset = pos; ext.file = link.path
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
    public var format: ImageFormat = .qcow2
    public var compress = false
    public var create: Qcow2CreateOptions = Qcow2CreateOptions(size: 0)
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

/// Copies `source` into a new image at `path` (written to a temporary file, then renamed).
public func convert(_ source: any BlockBackend, to path: String, options: ConvertOptions) throws(DiskError) {
    let size = source.virtualSize
    try atomicWrite(path) { (f) throws(DiskError) in
        switch options.format {
        case .raw:
            try f.truncate(size)
            let chunk = 1 << 20
            var buf = [UInt8](repeating: 0, count: chunk)
            var pos: UInt64 = 0
            while pos < size {
                let n = Int(min(UInt64(chunk), size - pos))
                try rw(&buf) { (b) throws(DiskError) in
                    let s = UnsafeMutableRawBufferPointer(rebasing: b[0..<n])
                    try source.read(at: pos, into: s)
                    if !isZero(UnsafeRawBufferPointer(s)) { try f.pwrite(UnsafeRawBufferPointer(s), at: pos) }
                }
                pos += UInt64(n)
            }
        case .qcow2:
            var co = options.create
            co.size = size
            co.preallocation = .off
            try Qcow2Image.create(file: f, options: co)
            let img = try Qcow2Image(file: f, path: nil, options: {
                var o = Qcow2OpenOptions(writable: true)
                o.openBacking = false
                return o
            }())
            let cs = Int(img.clusterSize)
            let chunk = max(cs, options.compress ? cs : 1 << 20)
            var buf = [UInt8](repeating: 0, count: chunk)
            var pos: UInt64 = 0
            while pos < size {
                let n = Int(min(UInt64(chunk), size - pos))
                try rw(&buf) { (b) throws(DiskError) in
                    let s = UnsafeMutableRawBufferPointer(rebasing: b[0..<n])
                    try source.read(at: pos, into: s)
                    var o = 0
                    while o < n {
                        let m = min(cs, n - o)
                        let piece = UnsafeRawBufferPointer(rebasing: b[o..<o + m])
                        if !isZero(piece) {
                            if options.compress {
                                if m < cs { (b.baseAddress! + o + m).initializeMemory(as: UInt8.self, repeating: 0, count: cs - m) }
                                try img.writeCompressed(cluster: (pos + UInt64(o)) / UInt64(cs),
                                                        data: UnsafeRawBufferPointer(rebasing: b[o..<o + cs]))
                            } else {
                                try img.write(at: pos + UInt64(o), from: piece)
                            }
                        }
                        o += m
                    }
                }
                pos += UInt64(n)
            }
            try img.finishWrites()
        }
    }
}

// MARK: commit and rebase

func openQcow2(_ path: String, writable: Bool, openBacking: Bool = true) throws(DiskError) -> Qcow2Image {
    let f = try PosixFile(path: path, writable: writable)
    guard try probeFormat(f) == .qcow2 else { throw .invalidArgument("\(path) is not a qcow2 image") }
    var o = Qcow2OpenOptions(writable: writable)
    o.openBacking = openBacking
    return try Qcow2Image(file: f, path: path, options: o)
}

/// Writes every cluster the top image holds into its backing file, then empties the top image.
public func commit(path: String, keepTop: Bool = false) throws(DiskError) {
    // Only the top image's own clusters are read: its backing chain stays closed, so the base can be locked for writing.
    let top = try openQcow2(path, writable: !keepTop, openBacking: false)
    guard let name = top.header.backingFile else { throw .invalidArgument("\(path) has no backing file to commit into") }
    let bp = resolveBacking(name, relativeTo: path)
    let fmt = top.header.backingFormat.flatMap { ImageFormat(rawValue: $0) }
    let base = try openImage(path: bp, format: fmt, writable: true)
    if base.virtualSize < top.virtualSize {
        if let q = base as? Qcow2Image { try q.resize(to: top.virtualSize) }
        else if let r = base as? RawBackend { try r.file.truncate(top.virtualSize) }
    }
    let base2 = (base as? RawBackend).map { try? RawBackend(file: $0.file) } ?? nil
    let target: any BlockBackend = base2 ?? base
    let cs = top.clusterSize
    var buf = [UInt8](repeating: 0, count: Int(cs))
    var pos: UInt64 = 0
    let size = top.virtualSize
    while pos < size {
        let (st, n) = try top.status(at: pos)
        switch st {
        case .unallocated: break
        case .zero: try target.writeZeroes(at: pos, length: n)
        case .data, .compressed:
            try rw(&buf) { (b) throws(DiskError) in
                let s = UnsafeMutableRawBufferPointer(rebasing: b[0..<Int(n)])
                try top.read(at: pos, into: s)
                try target.write(at: pos, from: UnsafeRawBufferPointer(s))
            }
        }
        pos += n
    }
    try target.flush()
    if !keepTop {
        try top.clear(0, size, mode: .unallocate)
        try top.flush()
    }
}

/// Changes the backing file. Unless `unsafe`, first copies into the top image every cluster whose
/// contents would change, so the guest-visible data stays the same.
public func rebase(path: String, newBacking: String?, format: ImageFormat?, unsafe: Bool) throws(DiskError) {
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
        while pos < size {
            let (st, n) = try top.status(at: pos)
            if st == .unallocated {
                let len = Int(n)
                let differs = try rw(&a) { (pa) throws(DiskError) -> Bool in
                    try rw(&b) { (pb) throws(DiskError) -> Bool in
                        let sa = UnsafeMutableRawBufferPointer(rebasing: pa[0..<len])
                        let sb = UnsafeMutableRawBufferPointer(rebasing: pb[0..<len])
                        try top.read(at: pos, into: sa)
                        if let d = newDev { try readClamped(d, at: pos, into: sb) } else { sb.initializeMemory(as: UInt8.self, repeating: 0) }
                        if memcmp(sa.baseAddress!, sb.baseAddress!, len) != 0 {
                            try top.write(at: pos, from: UnsafeRawBufferPointer(sa))
                            return true
                        }
                        return false
                    }
                }
                _ = differs
            }
            pos += n
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

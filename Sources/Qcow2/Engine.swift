import Synchronization

/// Fixed geometry of an open image.
struct Geometry: Sendable {
    let cs: UInt64
    let bits: UInt64
    let l2Entries: UInt64
    let ext: Bool
    let rbEntries: UInt64
    let refOrder: UInt32
    let v3: Bool
    let csizeShift: UInt64
    let csizeMask: UInt64
    let coffMask: UInt64
    let sc: UInt64  // subcluster size (extended L2), else cluster size
    let zstd: Bool

    init(_ h: Qcow2Header) {
        cs = h.clusterSize
        bits = UInt64(h.clusterBits)
        l2Entries = h.l2Entries
        ext = h.extendedL2
        rbEntries = cs * 8 / UInt64(h.refcountBits)
        refOrder = h.refcountOrder
        v3 = h.version >= 3
        csizeShift = 62 - (bits - 8)
        csizeMask = (1 << (bits - 8)) - 1
        coffMask = (1 << csizeShift) - 1
        sc = ext ? cs / 32 : cs
        zstd = h.compressionType == 1
    }

    /// Host byte range [start, end) of a compressed cluster descriptor, sector aligned as `qemu-img check` counts it.
    @inline(__always) func compressedRange(_ e: UInt64) -> (coff: UInt64, csize: UInt64, start: UInt64, end: UInt64) {
        let coff = e & coffMask
        let nb = ((e >> csizeShift) & csizeMask) + 1
        let start = coff & ~511
        return (coff, nb * 512 - (coff & 511), start, start + nb * 512)
    }
}

enum EntryKind { case unallocated, zeroPlain, zeroAlloc, normal, compressed }

@inline(__always) func classify(_ e: UInt64, ext: Bool) -> EntryKind {
    if e & QC.compressed != 0 { return .compressed }
    let off = e & QC.l2OffsetMask
    let zero = !ext && (e & QC.zero != 0)
    if off == 0 { return zero ? .zeroPlain : .unallocated }
    return zero ? .zeroAlloc : .normal
}

/// The most recently decompressed cluster, so that small sequential reads inflate each cluster once.
final class DecompressCache: Sendable {
    let m = Mutex<(UInt64, [UInt8])>((UInt64.max, []))
    func reset() { m.withLock { $0 = (UInt64.max, []) } }
}

/// One contiguous piece of a guest request.
struct Segment: Sendable {
    enum Kind: Sendable { case data(UInt64), zero, backing, compressed(UInt64) }
    var guest: UInt64
    var length: Int
    var kind: Kind
}

/// How the data path reaches the bytes: the file, the backing device and the codec.
struct DataPath: Sendable {
    let file: any FileIO
    let backing: (any BlockBackend)?
    let g: Geometry

    func readCompressed(_ e: UInt64, into out: UnsafeMutableRawBufferPointer) throws(DiskError) {
        let r = g.compressedRange(e)
        let n = Int(min(r.csize, 2 * g.cs + 512))
        let tmp = UnsafeMutableRawBufferPointer.allocate(byteCount: n, alignment: 16)
        defer { tmp.deallocate() }
        try file.pread(tmp, at: r.coff)
        if g.zstd { try Codec.decompressZstd(UnsafeRawBufferPointer(tmp), into: out) }
        else { try Codec.inflateRaw(UnsafeRawBufferPointer(tmp), into: out) }
    }

    /// Performs the reads of `segs`; `base` is the guest offset of `buf[0]`.
    func perform(_ segs: [Segment], base: UInt64, into buf: UnsafeMutableRawBufferPointer,
                 cache: DecompressCache?) throws(DiskError) {
        for s in segs {
            let dst = UnsafeMutableRawBufferPointer(rebasing: buf[Int(s.guest - base)..<Int(s.guest - base) + s.length])
            switch s.kind {
            case .data(let host): try file.pread(dst, at: host)
            case .zero: dst.initializeMemory(as: UInt8.self, repeating: 0)
            case .backing:
                if let b = backing { try readClamped(b, at: s.guest, into: dst) }
                else { dst.initializeMemory(as: UInt8.self, repeating: 0) }
            case .compressed(let e):
                let inOff = Int(s.guest & (g.cs - 1))
                if let c = cache {
                    let hit: Bool = c.m.withLock { v in
                        guard v.0 == e, v.1.count == Int(g.cs) else { return false }
                        v.1.withUnsafeBytes { dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[inOff..<inOff + s.length])) }
                        return true
                    }
                    if hit { continue }
                }
                var full = [UInt8](repeating: 0, count: Int(g.cs))
                try rw(&full) { (fb) throws(DiskError) in try readCompressed(e, into: fb) }
                full.withUnsafeBytes { dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[inOff..<inOff + s.length])) }
                if let c = cache { c.m.withLock { $0 = (e, full) } }
            }
        }
    }
}

/// Mutable metadata of an open image. Every method runs under the image's lock.
struct Meta: @unchecked Sendable {
    let file: any FileIO
    let g: Geometry
    let dp: DataPath
    var header: Qcow2Header
    var l1: [UInt64]
    var l2Cache: [UInt64: [UInt64]] = [:]
    var l2Fifo: [UInt64] = []
    var l2Max: Int
    var refTable: [UInt64]
    var refTableDiskEntries: Int
    var rbCache: [UInt64: [UInt8]] = [:]
    var rbFifo: [UInt64] = []
    var rbMax: Int
    var deferRefcounts = false
    var dirtyRB: Set<UInt64> = []
    var freeHint: UInt64 = 0
    var endCluster: UInt64
    var fileLimit: UInt64
    var snapshots: [Qcow2Snapshot]
    var snapshotTableBytes: UInt64
    var compCursor: UInt64 = 0
    var compressedFreed = false
    /// Lazy refcounts: the dirty bit is set (and synced) before the first metadata write after a
    /// flush, and cleared at the next flush, so a power loss in between leaves an image that the
    /// next read-write open repairs, without a sync between every refcount and L2 update.
    var lazy = false
    var dirtyMarked = false
    /// Guest clusters whose new data is being written outside the lock.
    var pending: Set<UInt64> = []
    /// Where the metadata lies, for the overlap check; nil once metadata moved, rebuilt at the next check.
    var metadataMap: MetadataMap? = nil
    /// A write hit metadata: the corrupt bit is set and every later write fails.
    var markedCorrupt = false
    /// How log lines name the image.
    var name = "qcow2 image"
    /// What a lenient open (for `check`) found wrong before the check ran, in qemu-img's words.
    var openProblems: [String] = []
    /// The persistent bitmaps are marked consistent (autoclear bit) on disk, and Tern does not maintain them:
    /// the bit is cleared before the first guest data write, so an open that writes none leaves them valid.
    var bitmapsValidOnDisk = false

    var cs: UInt64 { g.cs }

    // MARK: L2 tables

    mutating func loadL2(_ off: UInt64) throws(DiskError) -> [UInt64] {
        if let t = l2Cache[off] { return t }
        guard off % cs == 0 else { throw .corrupt("L2 table offset \(hex(off)) is not cluster aligned") }
        guard off >= cs, off + cs <= fileLimit else { throw .corrupt("L2 table offset \(hex(off)) lies outside the file") }
        var t = [UInt64](repeating: 0, count: Int(cs / 8))
        try rw(&t) { (b) throws(DiskError) in try file.pread(b, at: off) }
        for i in t.indices { t[i] = UInt64(bigEndian: t[i]) }
        cacheL2(off, t)
        return t
    }

    mutating func cacheL2(_ off: UInt64, _ t: [UInt64]) {
        if l2Cache.updateValue(t, forKey: off) == nil {
            l2Fifo.append(off)
            if l2Fifo.count > l2Max {
                let victim = l2Fifo.removeFirst()
                l2Cache[victim] = nil
            }
        }
    }

    mutating func dropL2(_ off: UInt64) {
        if l2Cache.removeValue(forKey: off) != nil { l2Fifo.removeAll { $0 == off } }
    }

    /// (entry, bitmap) for guest cluster `gc`.
    @inline(__always) mutating func lookup(_ gc: UInt64) throws(DiskError) -> (UInt64, UInt64) {
        let i = Int(gc / g.l2Entries)
        guard i < l1.count else { return (0, 0) }
        let l1e = l1[i]
        if l1e & QC.l1ReservedMask != 0 { throw .corrupt("L1 entry \(i) has reserved bits set (\(hex(l1e)))") }
        let off = l1e & QC.l1OffsetMask
        if off == 0 { return (0, 0) }
        let idx = Int(gc % g.l2Entries)
        if let t = l2Cache[off] { return g.ext ? (t[2 * idx], t[2 * idx + 1]) : (t[idx], 0) }
        let t = try loadL2(off)
        return g.ext ? (t[2 * idx], t[2 * idx + 1]) : (t[idx], 0)
    }

    func validateData(_ e: UInt64) throws(DiskError) {
        if e & QC.compressed != 0 {
            let r = g.compressedRange(e)
            guard r.coff >= cs, r.coff < fileLimit else { throw .corrupt("compressed cluster at \(hex(r.coff)) lies outside the file") }
            return
        }
        if e & QC.l2StdReservedMask != 0 { throw .corrupt("L2 entry \(hex(e)) has reserved bits set") }
        let off = e & QC.l2OffsetMask
        if off != 0 {
            guard off >= cs, off < fileLimit else { throw .corrupt("data cluster \(hex(off)) lies outside the file") }
        }
    }

    /// Splits a guest range into segments.
    mutating func map(_ offset: UInt64, _ length: Int) throws(DiskError) -> [Segment] {
        var out: [Segment] = []
        var pos = offset
        let end = offset + UInt64(length)
        func add(_ s: Segment) {
            if var last = out.last, last.guest + UInt64(last.length) == s.guest {
                switch (last.kind, s.kind) {
                case (.zero, .zero), (.backing, .backing):
                    last.length += s.length; out[out.count - 1] = last; return
                case (.data(let a), .data(let b)) where a + UInt64(last.length) == b:
                    last.length += s.length; out[out.count - 1] = last; return
                default: break
                }
            }
            out.append(s)
        }
        while pos < end {
            let gc = pos >> g.bits
            let (e, bm) = try lookup(gc)
            try validateData(e)
            let clusterEnd = min((gc + 1) << g.bits, end)
            if !g.ext {
                let n = Int(clusterEnd - pos)
                switch classify(e, ext: false) {
                case .unallocated: add(Segment(guest: pos, length: n, kind: .backing))
                case .zeroPlain, .zeroAlloc: add(Segment(guest: pos, length: n, kind: .zero))
                case .normal: add(Segment(guest: pos, length: n, kind: .data((e & QC.l2OffsetMask) + (pos & (cs - 1)))))
                case .compressed: add(Segment(guest: pos, length: n, kind: .compressed(e)))
                }
                pos = clusterEnd
                continue
            }
            // Extended L2: 32 subclusters.
            let kind = classify(e, ext: true)
            if kind == .compressed {
                if bm != 0 { throw .corrupt("compressed cluster with a subcluster bitmap at guest cluster \(gc)") }
                add(Segment(guest: pos, length: Int(clusterEnd - pos), kind: .compressed(e)))
                pos = clusterEnd
                continue
            }
            let alloc = UInt32(truncatingIfNeeded: bm), zeros = UInt32(truncatingIfNeeded: bm >> 32)
            if alloc & zeros != 0 { throw .corrupt("subcluster both allocated and zero at guest cluster \(gc)") }
            if kind == .unallocated && alloc != 0 { throw .corrupt("unallocated cluster with allocated subclusters at guest cluster \(gc)") }
            while pos < clusterEnd {
                let si = (pos & (cs - 1)) / g.sc
                let subEnd = min(((pos >> g.bits) << g.bits) + (si + 1) * g.sc, clusterEnd)
                let n = Int(subEnd - pos)
                if alloc & (1 << si) != 0 {
                    add(Segment(guest: pos, length: n, kind: .data((e & QC.l2OffsetMask) + (pos & (cs - 1)))))
                } else if zeros & (1 << si) != 0 {
                    add(Segment(guest: pos, length: n, kind: .zero))
                } else {
                    add(Segment(guest: pos, length: n, kind: .backing))
                }
                pos = subEnd
            }
        }
        return out
    }

    mutating func readClusterLocked(_ gc: UInt64) throws(DiskError) -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: Int(cs))
        let segs = try map(gc << g.bits, Int(cs))
        try rw(&buf) { (b) throws(DiskError) in try dp.perform(segs, base: gc << g.bits, into: b, cache: nil) }
        return buf
    }

    @inline(__always) mutating func willModify() throws(DiskError) {
        if lazy && !dirtyMarked { try setDirtyBit(true) }
    }

    mutating func setDirtyBit(_ on: Bool) throws(DiskError) {
        if on { header.incompatibleFeatures |= QC.incompatDirty } else { header.incompatibleFeatures &= ~QC.incompatDirty }
        var b = [UInt8]()
        b.append64(header.incompatibleFeatures)
        if !on { try file.sync() }
        try file.writeBytes(b, at: 72)
        try file.sync()
        dirtyMarked = on
    }

    /// Makes everything durable; with lazy refcounts, also clears the dirty bit.
    mutating func syncAndClean() throws(DiskError) {
        if dirtyMarked { try setDirtyBit(false) } else { try file.sync() }
    }

    mutating func writeL1Entry(_ i: Int, _ v: UInt64) throws(DiskError) {
        try willModify()
        var be = v.bigEndian
        try withUnsafeBytes(of: &be) { (b) throws(DiskError) in try file.pwrite(b, at: header.l1TableOffset + UInt64(i) * 8) }
        let old = l1[i] & QC.l1OffsetMask, new = v & QC.l1OffsetMask
        l1[i] = v
        if old != new {
            // A table another entry still points at (a corrupt image) stays in the map.
            let stillActive = old != 0 && l1.contains { $0 & QC.l1OffsetMask == old }
            moveMetadata(from: stillActive ? 0 : old, to: new, bytes: cs, kind: .activeL2)
        }
    }

    /// Writes one L2 entry (and bitmap, with extended L2) of table `l2off`.
    mutating func setL2(_ l2off: UInt64, _ idx: Int, _ e: UInt64, _ bm: UInt64) throws(DiskError) {
        try willModify()
        _ = try loadL2(l2off)
        if g.ext {
            var pair = (e.bigEndian, bm.bigEndian)
            try withUnsafeBytes(of: &pair) { (b) throws(DiskError) in try file.pwrite(b, at: l2off + UInt64(idx) * 16) }
            l2Cache[l2off]![2 * idx] = e
            l2Cache[l2off]![2 * idx + 1] = bm
        } else {
            var be = e.bigEndian
            try withUnsafeBytes(of: &be) { (b) throws(DiskError) in try file.pwrite(b, at: l2off + UInt64(idx) * 8) }
            l2Cache[l2off]![idx] = e
        }
    }

    mutating func writeL2Table(_ off: UInt64, _ t: [UInt64]) throws(DiskError) {
        try willModify()
        var be = t
        for i in be.indices { be[i] = be[i].bigEndian }
        try ro(be) { (b) throws(DiskError) in try file.pwrite(b, at: off) }
        if l2Cache[off] != nil { l2Cache[off] = t } else { cacheL2(off, t) }
    }

    /// Returns the offset of an L2 table for L1 index `i` that may be modified: allocates or copies it as needed.
    mutating func writableL2(_ i: Int) throws(DiskError) -> UInt64 {
        try willWriteGuestData()
        guard i < l1.count else { throw .corrupt("guest offset beyond the L1 table") }
        let e = l1[i]
        let off = e & QC.l1OffsetMask
        if off != 0 && e & QC.copied != 0 { return off }
        var t: [UInt64]
        if off == 0 {
            t = [UInt64](repeating: 0, count: Int(cs / 8))
        } else {
            t = try loadL2(off)
            // A shared table's entries are shared too: drop COPIED so that writes copy the data.
            let step = g.ext ? 2 : 1
            var k = 0
            while k < t.count { t[k] &= ~QC.copied; k += step }
        }
        let n = try allocateCluster()
        try checkOverlap(n, cs)
        try writeL2Table(n, t)
        try writeL1Entry(i, n | QC.copied)
        if off != 0 { try release(cluster: off) }
        return n
    }

    // MARK: writes

    /// Host offset for an in-place write of `n` bytes at `inOff` in guest cluster `gc`, or nil if it must allocate.
    @inline(__always) mutating func inPlaceHost(_ gc: UInt64, _ inOff: UInt64, _ n: UInt64) throws(DiskError) -> UInt64? {
        let (e, bm) = try lookup(gc)
        guard e & (QC.copied | QC.compressed | (g.ext ? 0 : QC.zero)) == QC.copied else { return nil }
        let host = e & QC.l2OffsetMask
        guard host != 0 else { return nil }
        try validateData(e)
        if g.ext {
            let first = inOff / g.sc, last = (inOff + n - 1) / g.sc
            let mask = UInt32(truncatingIfNeeded: ((UInt64(1) << (last + 1)) - 1) & ~((UInt64(1) << first) - 1))
            guard UInt32(truncatingIfNeeded: bm) & mask == mask else { return nil }
        }
        try willWriteGuestData()
        try checkOverlap(host + inOff, n)
        return host + inOff
    }

    enum FullWrite { case inPlace(UInt64), busy, fresh(host: UInt64, l2off: UInt64), locked }

    /// First half of a whole-cluster write: finds or allocates the host cluster. A fresh cluster's
    /// data is then written outside the lock and published with `publishFullWrite`.
    mutating func beginFullWrite(_ gc: UInt64) throws(DiskError) -> FullWrite {
        if pending.contains(gc) { return .busy }
        try willWriteGuestData()
        if let h = try inPlaceHost(gc, 0, cs) { return .inPlace(h) }
        if g.ext { return .locked }
        let l2off = try writableL2(Int(gc / g.l2Entries))
        let (e, _) = try lookup(gc)
        try validateData(e)
        let kind = classify(e, ext: false)
        if (kind == .normal || kind == .zeroAlloc) && e & QC.copied != 0 { return .locked }
        let host = try allocateCluster()
        try checkOverlap(host, cs)
        pending.insert(gc)
        return .fresh(host: host, l2off: l2off)
    }

    /// Second half: points the L2 entry at the written cluster and drops whatever it replaced.
    mutating func publishFullWrite(_ gc: UInt64, host: UInt64, l2off: UInt64, ok: Bool) throws(DiskError) {
        pending.remove(gc)
        guard ok else {
            try addRef(host >> g.bits, -1)
            return
        }
        // The L2 table stays in place: only snapshot and resize operations (which need quiescence) move it.
        let (e, _) = try lookup(gc)
        try setL2(l2off, Int(gc % g.l2Entries), host | QC.copied, 0)
        try releaseEntry(e)
    }

    mutating func allocatingWrite(_ gc: UInt64, _ inOff: Int, _ data: UnsafeRawBufferPointer) throws(DiskError) {
        try willWriteGuestData()
        let l1i = Int(gc / g.l2Entries), idx = Int(gc % g.l2Entries)
        let l2off = try writableL2(l1i)
        let (e, _) = try lookup(gc)
        try validateData(e)
        var buf: [UInt8]
        if inOff == 0 && data.count == Int(cs) {
            buf = Array(data)
        } else {
            buf = try readClusterLocked(gc)
            buf.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: inOff).copyMemory(from: data.baseAddress!, byteCount: data.count) }
        }
        let kind = classify(e, ext: g.ext)
        let allAlloc: UInt64 = g.ext ? 0xffff_ffff : 0
        if (kind == .normal || kind == .zeroAlloc) && e & QC.copied != 0 {
            let host = e & QC.l2OffsetMask
            try checkOverlap(host, cs)
            try ro(buf) { (b) throws(DiskError) in try file.pwrite(b, at: host) }
            try setL2(l2off, idx, host | QC.copied, allAlloc)
            return
        }
        let host = try allocateCluster()
        try checkOverlap(host, cs)
        try ro(buf) { (b) throws(DiskError) in try file.pwrite(b, at: host) }
        try setL2(l2off, idx, host | QC.copied, allAlloc)
        try releaseEntry(e)
    }

    /// Drops the references an L2 entry held.
    mutating func releaseEntry(_ e: UInt64, punch: Bool = false) throws(DiskError) {
        switch classify(e, ext: g.ext) {
        case .normal, .zeroAlloc:
            let off = e & QC.l2OffsetMask
            let left = try addRef(off >> g.bits, -1)
            if left == 0 && punch { file.punchHole(at: off, length: cs) }
        case .compressed:
            let r = g.compressedRange(e)
            var c = r.start >> g.bits
            while c << g.bits < r.end { _ = try addRef(c, -1); c += 1 }
            compressedFreed = true
        default: break
        }
    }

    mutating func release(cluster off: UInt64) throws(DiskError) {
        if try addRef(off >> g.bits, -1) == 0 { dropL2(off) }
    }

    enum ClearMode { case discard, zero, unallocate }

    /// Deallocates or zeroes whole guest cluster `gc`.
    mutating func clearCluster(_ gc: UInt64, mode: ClearMode, hasBacking: Bool) throws(DiskError) {
        try willWriteGuestData()
        let l1i = Int(gc / g.l2Entries), idx = Int(gc % g.l2Entries)
        guard l1i < l1.count else { return }
        if l1[l1i] & QC.l1OffsetMask == 0 {
            // Nothing allocated here; zeroes over a backing file still need an entry.
            if !(mode == .zero && hasBacking) { return }
        }
        let (e, bm) = try lookup(gc)
        var ne: UInt64 = 0, nbm: UInt64 = 0
        switch mode {
        case .unallocate: break
        case .discard:
            if hasBacking && g.v3 { if g.ext { nbm = 0xffff_ffff << 32 } else { ne = QC.zero } }
        case .zero:
            // v2 has no zero flag; callers only zero-by-deallocating there when no backing file shows through.
            if g.ext { nbm = 0xffff_ffff << 32 } else if g.v3 { ne = QC.zero }
        }
        if e == ne && bm == nbm { return }
        let l2off = try writableL2(l1i)
        try setL2(l2off, idx, ne, nbm)
        try releaseEntry(e, punch: true)
    }

    // MARK: refcounts

    @inline(__always) func rbGet(_ b: [UInt8], _ i: Int) -> UInt64 {
        switch g.refOrder {
        case 0: return UInt64((b[i >> 3] >> UInt8(i & 7)) & 1)
        case 1: return UInt64((b[i >> 2] >> UInt8(2 * (i & 3))) & 3)
        case 2: return UInt64((b[i >> 1] >> UInt8(4 * (i & 1))) & 15)
        case 3: return UInt64(b[i])
        case 4: return UInt64(b[2 * i]) << 8 | UInt64(b[2 * i + 1])
        case 5: return UInt64(be32(b, 4 * i))
        default: return be64(b, 8 * i)
        }
    }

    /// Sets entry `i`; returns the byte range that changed.
    @inline(__always) func rbSet(_ b: inout [UInt8], _ i: Int, _ v: UInt64) -> Range<Int> {
        switch g.refOrder {
        case 0:
            b[i >> 3] = (b[i >> 3] & ~(1 << UInt8(i & 7))) | (UInt8(v) << UInt8(i & 7)); return (i >> 3)..<(i >> 3) + 1
        case 1:
            let s = UInt8(2 * (i & 3)); b[i >> 2] = (b[i >> 2] & ~(3 << s)) | (UInt8(v) << s); return (i >> 2)..<(i >> 2) + 1
        case 2:
            let s = UInt8(4 * (i & 1)); b[i >> 1] = (b[i >> 1] & ~(15 << s)) | (UInt8(v) << s); return (i >> 1)..<(i >> 1) + 1
        case 3: b[i] = UInt8(v); return i..<i + 1
        case 4: b.put16(UInt16(v), at: 2 * i); return 2 * i..<2 * i + 2
        case 5: b.put32(UInt32(v), at: 4 * i); return 4 * i..<4 * i + 4
        default: b.put64(v, at: 8 * i); return 8 * i..<8 * i + 8
        }
    }

    var maxRefcount: UInt64 { g.refOrder == 6 ? UInt64.max : (UInt64(1) << (UInt64(1) << UInt64(g.refOrder))) - 1 }

    mutating func loadRB(_ off: UInt64) throws(DiskError) -> [UInt8] {
        if let b = rbCache[off] { return b }
        guard off % cs == 0, off >= cs, off < fileLimit else {
            throw .corrupt("refcount block offset \(hex(off)) is invalid or outside the file")
        }
        let b = try file.readBytes(at: off, count: Int(cs))
        rbCache[off] = b
        rbFifo.append(off)
        if rbFifo.count > rbMax {
            // Never evict a block with unwritten changes.
            if let k = rbFifo.firstIndex(where: { !dirtyRB.contains($0) }) {
                rbCache[rbFifo.remove(at: k)] = nil
            }
        }
        return b
    }

    func rbOffset(_ c: UInt64) throws(DiskError) -> UInt64 {
        let rt = Int(c / g.rbEntries)
        guard rt < refTable.count else { return 0 }
        let e = refTable[rt]
        if e & QC.rtReservedMask != 0 { throw .corrupt("refcount table entry \(rt) has reserved bits set") }
        return e & QC.rtOffsetMask
    }

    mutating func refcount(_ c: UInt64) throws(DiskError) -> UInt64 {
        let off = try rbOffset(c)
        if off == 0 { return 0 }
        let b = try loadRB(off)
        return rbGet(b, Int(c % g.rbEntries))
    }

    mutating func setRefcount(_ c: UInt64, _ v: UInt64) throws(DiskError) {
        try willModify()
        let off = try rbOffset(c)
        guard off != 0 else { throw .corrupt("cluster \(c) has no refcount block") }
        _ = try loadRB(off)
        let r = rbSet(&rbCache[off]!, Int(c % g.rbEntries), v)
        if deferRefcounts {
            dirtyRB.insert(off)
        } else {
            try ro(rbCache[off]!) { (b) throws(DiskError) in
                try file.pwrite(UnsafeRawBufferPointer(rebasing: b[r]), at: off + UInt64(r.lowerBound))
            }
        }
        if v == 0 && c < freeHint { freeHint = c }
    }

    @discardableResult
    mutating func addRef(_ c: UInt64, _ delta: Int) throws(DiskError) -> UInt64 {
        let v = try refcount(c)
        if delta < 0 {
            guard v >= UInt64(-delta) else { throw .corrupt("refcount of cluster \(c) would drop below zero") }
            try setRefcount(c, v - UInt64(-delta))
            return v - UInt64(-delta)
        }
        let (nv, o) = v.addingReportingOverflow(UInt64(delta))
        guard !o, nv <= maxRefcount else {
            throw .unsupported("refcount of cluster \(c) would exceed \(maxRefcount) (refcount width \(1 << g.refOrder) bits)")
        }
        try setRefcount(c, nv)
        return nv
    }

    mutating func flushRefcounts() throws(DiskError) {
        for off in dirtyRB.sorted() {
            try ro(rbCache[off]!) { (b) throws(DiskError) in try file.pwrite(b, at: off) }
        }
        dirtyRB.removeAll()
        deferRefcounts = false
    }

    /// Forgets refcount changes not yet written (after a failed batch).
    mutating func discardDeferred() {
        for off in dirtyRB { rbCache[off] = nil; rbFifo.removeAll { $0 == off } }
        dirtyRB.removeAll()
        deferRefcounts = false
    }

    /// Places a refcount block at cluster `c`, describing itself.
    mutating func createRefblock(at c: UInt64) throws(DiskError) {
        try willModify()
        let rt = Int(c / g.rbEntries)
        let off = c * cs
        try checkOverlap(off, cs)
        var b = [UInt8](repeating: 0, count: Int(cs))
        _ = rbSet(&b, Int(c % g.rbEntries), 1)
        try file.pwrite(b.withUnsafeBytes { UnsafeRawBufferPointer($0) }, at: off)
        rbCache[off] = b
        rbFifo.append(off)
        endCluster = max(endCluster, c + 1)
        fileLimit = max(fileLimit, endCluster * cs)
        refTable[rt] = off
        moveMetadata(from: 0, to: off, bytes: cs, kind: .refcountBlock)
        if rt < refTableDiskEntries {
            var be = off.bigEndian
            try withUnsafeBytes(of: &be) { (p) throws(DiskError) in try file.pwrite(p, at: header.refcountTableOffset + UInt64(rt) * 8) }
        }
    }

    /// A free cluster with its refcount set to 1.
    mutating func allocateCluster() throws(DiskError) -> UInt64 {
        var c = freeHint
        while c < endCluster {
            let rt = Int(c / g.rbEntries)
            if rt >= refTable.count { break }
            let off = refTable[rt] & QC.rtOffsetMask
            if off == 0 {
                try createRefblock(at: c)
                c += 1
                continue
            }
            let blockEnd = min(UInt64(rt + 1) * g.rbEntries, endCluster)
            var found = false
            do {
                // Scope the block so that setRefcount below mutates the cached copy in place.
                let b = try loadRB(off)
                while c < blockEnd {
                    if rbGet(b, Int(c % g.rbEntries)) == 0 { found = true; break }
                    c += 1
                }
            }
            if found {
                try setRefcount(c, 1)
                freeHint = c + 1
                return c * cs
            }
        }
        freeHint = endCluster
        let n = try appendClusters(1)
        freeHint = n + 1
        return n * cs
    }

    /// `n` contiguous new clusters at the end of the image, refcounts set to 1. Returns the first cluster index.
    mutating func appendClusters(_ n: UInt64) throws(DiskError) -> UInt64 {
        while true {
            let start = endCluster
            if Int((start + n + 1) / g.rbEntries) >= refTable.count {
                try growRefTable(minEntries: Int((start + n + 1) / g.rbEntries) + 1)
                continue
            }
            var placed = false
            var c = start
            while c < start + n {
                if refTable[Int(c / g.rbEntries)] & QC.rtOffsetMask == 0 {
                    try createRefblock(at: c)
                    placed = true
                    break
                }
                c += 1
            }
            if placed { continue }
            endCluster = start + n
            fileLimit = max(fileLimit, endCluster * cs)
            for c in start..<start + n { try setRefcount(c, 1) }
            return start
        }
    }

    mutating func growRefTable(minEntries: Int) throws(DiskError) {
        let perCluster = Int(cs / 8)
        var clusters = max((minEntries + perCluster - 1) / perCluster, Int(header.refcountTableClusters) * 2, 1)
        while UInt64(clusters * perCluster) * g.rbEntries < endCluster + 2 * UInt64(clusters) + 8 { clusters *= 2 }
        guard UInt64(clusters) * cs <= QC.maxRefTableBytes else { throw .unsupported("image too large: refcount table would exceed \(QC.maxRefTableBytes) bytes") }
        if refTable.count < clusters * perCluster {
            refTable.append(contentsOf: repeatElement(0, count: clusters * perCluster - refTable.count))
        }
        let start = try appendClusters(UInt64(clusters))
        var bytes = [UInt8](repeating: 0, count: clusters * Int(cs))
        for (i, e) in refTable.enumerated() where e != 0 { bytes.put64(e, at: 8 * i) }
        try file.writeBytes(bytes, at: start * cs)
        let oldOff = header.refcountTableOffset, oldClusters = UInt64(header.refcountTableClusters)
        var hb = [UInt8]()
        hb.append64(start * cs)
        hb.append32(UInt32(clusters))
        try file.writeBytes(hb, at: 48)
        header.refcountTableOffset = start * cs
        header.refcountTableClusters = UInt32(clusters)
        metadataMap = nil
        refTableDiskEntries = clusters * perCluster
        for k in 0..<oldClusters { _ = try addRef((oldOff >> g.bits) + k, -1) }
    }

    // MARK: header updates

    /// Writes header fields; the tables they point at may have moved, so the metadata map is rebuilt.
    mutating func writeHeaderFields(_ offset: Int, _ bytes: [UInt8]) throws(DiskError) {
        try willModify()
        metadataMap = nil
        try file.writeBytes(bytes, at: UInt64(offset))
    }

    mutating func rewriteHeader() throws(DiskError) {
        let b = try header.serialize()
        try file.writeBytes(b, at: 0)
        metadataMap = nil
    }

    // MARK: whole-tree refcount updates (snapshots)

    /// Adds `delta` to every L2 table and data cluster reachable from `table`.
    mutating func updateTree(_ table: [UInt64], _ delta: Int) throws(DiskError) {
        deferRefcounts = true
        var seen: Set<UInt64> = []
        for e in table {
            let off = e & QC.l1OffsetMask
            if off == 0 { continue }
            guard seen.insert(off).inserted else { throw .corrupt("L2 table \(hex(off)) appears twice in one L1 table") }
            let t = try loadL2(off)
            let step = g.ext ? 2 : 1
            var k = 0
            while k < t.count {
                let d = t[k]
                switch classify(d, ext: g.ext) {
                case .normal, .zeroAlloc: try addRef((d & QC.l2OffsetMask) >> g.bits, delta)
                case .compressed:
                    let r = g.compressedRange(d)
                    var c = r.start >> g.bits
                    while c << g.bits < r.end { try addRef(c, delta); c += 1 }
                default: break
                }
                k += step
            }
            if try addRef(off >> g.bits, delta) == 0 { dropL2(off) }
        }
        try flushRefcounts()
    }

    /// Makes COPIED in the active L1 and L2 tables match the refcounts exactly. Returns how many entries changed.
    @discardableResult
    mutating func fixCopied(clearOnly: Bool = false) throws(DiskError) -> Int {
        var changed = 0
        for i in l1.indices {
            let e = l1[i]
            let off = e & QC.l1OffsetMask
            if off == 0 { continue }
            var t = try loadL2(off)
            var dirty = false
            let step = g.ext ? 2 : 1
            var k = 0
            while k < t.count {
                let d = t[k]
                let kind = classify(d, ext: g.ext)
                if kind == .normal || kind == .zeroAlloc {
                    let want = clearOnly ? false : try refcount((d & QC.l2OffsetMask) >> g.bits) == 1
                    if want != (d & QC.copied != 0) {
                        t[k] = want ? d | QC.copied : d & ~QC.copied
                        dirty = true
                        changed += 1
                    }
                }
                k += step
            }
            if dirty { try writeL2Table(off, t) }
            let want = clearOnly ? false : try refcount(off >> g.bits) == 1
            if want != (e & QC.copied != 0) {
                try writeL1Entry(i, want ? e | QC.copied : e & ~QC.copied)
                changed += 1
            }
        }
        return changed
    }

    func readL1(_ off: UInt64, _ n: Int) throws(DiskError) -> [UInt64] {
        guard n > 0 else { return [] }
        guard off % cs == 0, off >= cs, off <= fileLimit, UInt64(n) * 8 <= fileLimit - off else {
            throw .corrupt("L1 table at \(hex(off)) lies outside the file")
        }
        var t = [UInt64](repeating: 0, count: n)
        try rw(&t) { (b) throws(DiskError) in try file.pread(b, at: off) }
        for i in t.indices { t[i] = UInt64(bigEndian: t[i]) }
        return t
    }

    /// Allocates contiguous clusters for `bytes` and writes them there.
    mutating func writeNewTable(_ bytes: [UInt8]) throws(DiskError) -> UInt64 {
        let n = max((UInt64(bytes.count) + cs - 1) / cs, 1)
        let start = try appendClusters(n) * cs
        try checkOverlap(start, n * cs)
        var padded = bytes
        padded.append(contentsOf: repeatElement(0, count: Int(n * cs) - bytes.count))
        try file.writeBytes(padded, at: start)
        return start
    }

    mutating func freeClusters(_ off: UInt64, bytes: UInt64) throws(DiskError) {
        if off == 0 || bytes == 0 { return }
        let n = (bytes + cs - 1) / cs
        for k in 0..<n { try addRef((off >> g.bits) + k, -1) }
    }

    static func l1Bytes(_ t: [UInt64]) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: t.count * 8)
        for (i, e) in t.enumerated() { b.put64(e, at: 8 * i) }
        return b
    }

    /// Writes a new snapshot table, switches the header to it, frees the old one.
    mutating func replaceSnapshotTable(_ list: [Qcow2Snapshot]) throws(DiskError) {
        let bytes = Qcow2Snapshot.serializeTable(list, version: header.version)
        let newOff = list.isEmpty ? 0 : try writeNewTable(bytes)
        var hb = [UInt8]()
        hb.append32(UInt32(list.count))
        hb.append64(newOff)
        try writeHeaderFields(60, hb)
        let oldOff = header.snapshotsOffset, oldBytes = snapshotTableBytes
        header.nbSnapshots = UInt32(list.count)
        header.snapshotsOffset = newOff
        snapshots = list
        snapshotTableBytes = UInt64(bytes.count)
        if oldOff != 0 { try freeClusters(oldOff, bytes: oldBytes) }
    }
}

/// What `check` found (and fixed). Field meanings follow `qemu-img check`.
public struct CheckResult: Sendable {
    public var corruptions = 0
    public var leaks = 0
    public var checkErrors = 0
    public var corruptionsFixed = 0
    public var leaksFixed = 0
    public var messages: [String] = []
    public var imageEndOffset: UInt64 = 0
    public var totalClusters: UInt64 = 0
    public var allocatedClusters: UInt64 = 0
    public var fragmentedClusters: UInt64 = 0
    public var compressedClusters: UInt64 = 0

    public var isClean: Bool { corruptions == 0 && leaks == 0 && checkErrors == 0 }
    /// The exit status `qemu-img check` would use: 0 clean, 1 check failed, 2 corruption, 3 leaks only.
    public var exitCode: Int32 {
        if checkErrors > 0 { return 1 }
        if corruptions > 0 { return 2 }
        if leaks > 0 { return 3 }
        return 0
    }

    mutating func note(_ s: String) { if messages.count < 200 { messages.append(s) } }
}

enum Checker {
    static let maxClusters = 1 << 27
    static let maxL1Work = 64 << 20

    static func run(_ m: inout Meta, repair: Bool) throws(DiskError) -> CheckResult {
        let first = try scan(&m)
        guard repair, first.res.corruptions > 0 || first.res.leaks > 0 else { return first.res }
        try fix(&m, first)
        var after = try scan(&m).res
        after.leaksFixed = max(0, first.res.leaks - after.leaks)
        after.corruptionsFixed = max(0, first.res.corruptions - after.corruptions)
        after.messages = first.res.messages.map { "Repairing: " + $0 } + after.messages
        return after
    }

    struct Scan {
        var res: CheckResult
        var refs: [UInt32]
        var metaClusters: [UInt64]  // refcount table and blocks
        var needRebuild: Bool
    }

    static func scan(_ m: inout Meta) throws(DiskError) -> Scan {
        let file = m.file, g = m.g, cs = g.cs
        let physical = try file.size()
        let n = Int((physical + cs - 1) / cs)
        guard n <= maxClusters else { throw .unsupported("image file too large to check (\(n) clusters)") }
        var res = CheckResult()
        var refs = [UInt32](repeating: 0, count: n)
        var metaClusters: [UInt64] = []
        var needRebuild = false
        res.totalClusters = (m.header.size + cs - 1) / cs

        func inc(_ off: UInt64, _ len: UInt64, _ what: String) {
            if len == 0 { return }
            var c = off / cs
            let last = (off + len - 1) / cs
            while c <= last {
                if c >= UInt64(n) {
                    res.corruptions += 1
                    res.note("ERROR \(what) at \(hex(off)) (\(len) bytes) exceeds the end of the file")
                    return
                }
                if refs[Int(c)] < UInt32.max { refs[Int(c)] += 1 }
                c += 1
            }
        }

        // Pass 1: L1 tables. Count how many times each L2 table is referenced.
        var l2Mult: [UInt64: UInt32] = [:]
        var activeL2: Set<UInt64> = []
        var copiedChecks: [(cluster: UInt64, copied: Bool, what: String)] = []
        var work = 0
        inc(0, cs, "header")
        var tables: [(off: UInt64, size: UInt32, active: Bool)] = [(m.header.l1TableOffset, m.header.l1Size, true)]
        for s in m.snapshots { tables.append((s.l1TableOffset, s.l1Size, false)) }
        for (ti, t) in tables.enumerated() {
            let what = t.active ? "active L1 table" : "L1 table of snapshot \(m.snapshots[ti - 1].id)"
            if t.size == 0 { continue }
            guard t.off % cs == 0 else { res.corruptions += 1; res.note("ERROR \(what) offset \(hex(t.off)) is not cluster aligned"); continue }
            inc(t.off, UInt64(t.size) * 8, what)
            work += Int(t.size)
            guard work <= maxL1Work else { res.checkErrors += 1; res.note("ERROR too many L1 entries to check"); break }
            guard t.off <= physical, UInt64(t.size) * 8 <= physical - t.off else { continue }
            let l1 = t.active ? m.l1 : try m.readL1(t.off, Int(t.size))
            var seen: Set<UInt64> = []
            for (i, e) in l1.enumerated() {
                if e & QC.l1ReservedMask != 0 { res.corruptions += 1; res.note("ERROR \(what) entry \(i) has reserved bits set: \(hex(e))") }
                let off = e & QC.l1OffsetMask
                if off == 0 { continue }
                if off % cs != 0 { res.corruptions += 1; res.note("ERROR L2 table offset \(hex(off)) is not cluster aligned"); continue }
                if !seen.insert(off).inserted { res.corruptions += 1; res.note("ERROR L2 table \(hex(off)) appears twice in the \(what)"); continue }
                inc(off, cs, "L2 table")
                if off >= physical { continue }
                l2Mult[off, default: 0] += 1
                if t.active {
                    activeL2.insert(off)
                    copiedChecks.append((off / cs, e & QC.copied != 0, "L2 table \(hex(off))"))
                }
            }
        }
        // Pass 2: each distinct L2 table once.
        for (off, mult) in l2Mult.sorted(by: { $0.key < $1.key }) {
            let active = activeL2.contains(off)
            var raw = [UInt64](repeating: 0, count: Int(cs / 8))
            try rw(&raw) { (b) throws(DiskError) in try file.pread(b, at: off) }
            let step = g.ext ? 2 : 1
            var k = 0
            var prevHost: UInt64 = 0
            while k < raw.count {
                let e = UInt64(bigEndian: raw[k])
                let bm = g.ext ? UInt64(bigEndian: raw[k + 1]) : 0
                let kind = classify(e, ext: g.ext)
                let where_ = "L2 table \(hex(off)) entry \(k / step)"
                if kind != .compressed && e & QC.l2StdReservedMask != 0 {
                    res.corruptions += 1; res.note("ERROR \(where_) has reserved bits set: \(hex(e))")
                }
                if g.ext {
                    let a = UInt32(truncatingIfNeeded: bm), z = UInt32(truncatingIfNeeded: bm >> 32)
                    if kind == .compressed && bm != 0 { res.corruptions += 1; res.note("ERROR \(where_): compressed cluster with a subcluster bitmap") }
                    else if a & z != 0 { res.corruptions += 1; res.note("ERROR \(where_): subclusters both allocated and zero") }
                    else if kind == .unallocated && a != 0 { res.corruptions += 1; res.note("ERROR \(where_): unallocated cluster with allocated subclusters") }
                }
                switch kind {
                case .compressed:
                    if e & QC.copied != 0 { res.corruptions += 1; res.note("ERROR \(where_): compressed cluster has COPIED set") }
                    let r = g.compressedRange(e)
                    for _ in 0..<mult { inc(r.start, r.end - r.start, "compressed cluster") }
                    if active { res.allocatedClusters += 1; res.compressedClusters += 1 }
                case .normal, .zeroAlloc:
                    let host = e & QC.l2OffsetMask
                    if host % cs != 0 { res.corruptions += 1; res.note("ERROR \(where_): data cluster \(hex(host)) is not cluster aligned"); break }
                    for _ in 0..<mult { inc(host, cs, "data cluster") }
                    if active {
                        res.allocatedClusters += 1
                        if prevHost != 0 && host != prevHost + cs { res.fragmentedClusters += 1 }
                        prevHost = host
                        copiedChecks.append((host / cs, e & QC.copied != 0, "data cluster \(hex(host))"))
                    }
                default: break
                }
                k += step
            }
        }
        if m.header.nbSnapshots > 0 { inc(m.header.snapshotsOffset, m.snapshotTableBytes, "snapshot table") }
        let rtOff = m.header.refcountTableOffset
        inc(rtOff, UInt64(m.header.refcountTableClusters) * cs, "refcount table")
        for c in 0..<UInt64(m.header.refcountTableClusters) { metaClusters.append(rtOff / cs + c) }
        var blocks: [UInt64] = []
        for (i, e) in m.refTable.enumerated() {
            if e == 0 { continue }
            if e & QC.rtReservedMask != 0 { res.corruptions += 1; needRebuild = true; res.note("ERROR refcount table entry \(i) has reserved bits set") ; continue }
            let off = e & QC.rtOffsetMask
            if off % cs != 0 { res.corruptions += 1; needRebuild = true; res.note("ERROR refcount block \(i) is not cluster aligned"); continue }
            if off >= physical { res.corruptions += 1; needRebuild = true; res.note("ERROR refcount block \(i) is outside the image"); continue }
            inc(off, cs, "refcount block")
            metaClusters.append(off / cs)
            blocks.append(off / cs)
        }
        // Compare with the stored refcounts.
        var end: UInt64 = 0
        var disk = [UInt64](repeating: 0, count: n)
        for c in 0..<n {
            let d: UInt64
            do { d = try m.refcount(UInt64(c)) } catch {
                res.corruptions += 1
                needRebuild = true
                res.note("ERROR cannot read the refcount of cluster \(c): \(error)")
                d = 0
            }
            disk[c] = d
            let r = UInt64(refs[c])
            if d < r {
                res.corruptions += 1
                res.note("ERROR cluster \(c) refcount=\(d) reference=\(r)")
                if (try? m.rbOffset(UInt64(c))) ?? 0 == 0 { needRebuild = true }
            } else if d > r {
                res.leaks += 1
                res.note("Leaked cluster \(c) refcount=\(d) reference=\(r)")
            }
            if d > 0 || r > 0 { end = UInt64(c + 1) * cs }
            if r > m.maxRefcount { needRebuild = true }
        }
        for b in blocks where b < UInt64(n) && refs[Int(b)] != 1 {
            res.corruptions += 1
            needRebuild = true
            res.note("ERROR refcount block at cluster \(b) is referenced \(refs[Int(b)]) times")
        }
        for c in copiedChecks where c.cluster < UInt64(n) {
            let one = disk[Int(c.cluster)] == 1
            if one != c.copied {
                res.corruptions += 1
                res.note("ERROR OFLAG_COPIED \(c.what): refcount=\(disk[Int(c.cluster)])")
            }
        }
        res.imageEndOffset = end
        return Scan(res: res, refs: refs, metaClusters: metaClusters, needRebuild: needRebuild)
    }

    static func fix(_ m: inout Meta, _ s: Scan) throws(DiskError) {
        let cs = m.cs
        for r in s.refs where UInt64(r) > m.maxRefcount {
            throw .unsupported("a cluster has \(r) references, more than \(1 << m.g.refOrder)-bit refcounts can hold")
        }
        if !s.needRebuild {
            m.deferRefcounts = true
            for c in s.refs.indices {
                let d = try m.refcount(UInt64(c))
                if d != UInt64(s.refs[c]) { try m.setRefcount(UInt64(c), UInt64(s.refs[c])) }
            }
            try m.flushRefcounts()
        } else {
            try rebuild(&m, s)
        }
        m.freeHint = 0
        try m.fixCopied()
        try m.file.sync()
        _ = cs
    }

    /// Writes a complete new refcount table and blocks after the end of the file and switches to them.
    static func rebuild(_ m: inout Meta, _ s: Scan) throws(DiskError) {
        let cs = m.cs, rbe = m.g.rbEntries
        var refs = s.refs.map { UInt64($0) }
        for c in s.metaClusters where c < UInt64(refs.count) && refs[Int(c)] > 0 { refs[Int(c)] -= 1 }
        let base = max(UInt64(refs.count), m.endCluster)
        var blocks: UInt64 = 1, tableClusters: UInt64 = 1
        while true {
            let total = base + blocks + tableClusters
            let nb = (total + rbe - 1) / rbe
            let nt = max(1, (nb * 8 + cs - 1) / cs)
            if nb == blocks && nt == tableClusters { break }
            blocks = nb
            tableClusters = nt
        }
        guard tableClusters * cs <= QC.maxRefTableBytes else { throw .unsupported("image too large to rebuild refcounts") }
        let total = base + blocks + tableClusters
        refs.append(contentsOf: repeatElement(0, count: Int(total) - refs.count))
        for c in base..<total { refs[Int(c)] = 1 }
        m.rbCache = [:]
        m.rbFifo = []
        m.dirtyRB = []
        var table = [UInt64](repeating: 0, count: Int(tableClusters * cs / 8))
        for b in 0..<blocks {
            var block = [UInt8](repeating: 0, count: Int(cs))
            let lo = b * rbe
            for c in lo..<min(lo + rbe, total) where refs[Int(c)] != 0 { _ = m.rbSet(&block, Int(c - lo), refs[Int(c)]) }
            let off = (base + b) * cs
            try m.file.writeBytes(block, at: off)
            table[Int(b)] = off
        }
        try m.file.writeBytes(Meta.l1Bytes(table), at: (base + blocks) * cs)
        try m.file.sync()
        var hb = [UInt8]()
        hb.append64((base + blocks) * cs)
        hb.append32(UInt32(tableClusters))
        try m.writeHeaderFields(48, hb)
        m.header.refcountTableOffset = (base + blocks) * cs
        m.header.refcountTableClusters = UInt32(tableClusters)
        m.refTable = table
        m.refTableDiskEntries = table.count
        m.endCluster = total
        m.fileLimit = max(m.fileLimit, total * cs)
    }
}

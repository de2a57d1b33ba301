/// What `check` found (and fixed). Field meanings follow `qemu-img check`.
public struct CheckResult: Sendable {
    public var corruptions = 0
    public var leaks = 0
    public var checkErrors = 0
    public var corruptionsFixed = 0
    public var leaksFixed = 0
    /// Stored refcounts below the references counted (the corruptions a refcount repair fixes).
    public var refcountErrors = 0
    /// What the check reported, one line each, in qemu-img's words.
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

    mutating func note(_ s: String) { if messages.count < 10_000 { messages.append(s) } }
}

/// How far `check` repairs, as `qemu-img check -r`: leaked clusters only, or refcount errors and COPIED flags too.
public enum RepairMode: String, Sendable, CaseIterable {
    case leaks, all
}

/// The metadata check, in QEMU's phases and words (block/qcow2-refcount.c): count the references of every
/// cluster, compare them with the stored refcounts, then check the COPIED flags; repair what `RepairMode` allows.
enum Checker {
    static let maxClusters = 1 << 27
    static let maxL1Work = 64 << 20

    static func run(_ m: inout Meta, repair: RepairMode?) throws(DiskError) -> CheckResult {
        var repairedFirst = CheckResult()
        if repair == .all && !m.openProblems.isEmpty {
            // An incomplete snapshot table: keep the snapshots that were read whole, as QEMU does.
            var hb = [UInt8]()
            hb.append32(UInt32(m.snapshots.count))
            hb.append64(m.snapshots.isEmpty ? 0 : m.header.snapshotsOffset)
            try m.writeHeaderFields(60, hb)
            m.header.nbSnapshots = UInt32(m.snapshots.count)
            if m.snapshots.isEmpty { m.header.snapshotsOffset = 0 }
            m.snapshotTableBytes = UInt64(Qcow2Snapshot.serializeTable(m.snapshots, version: m.header.version).count)
            for problem in m.openProblems {
                repairedFirst.note(problem.hasPrefix("ERROR ") ? "Repairing " + problem.dropFirst(6) : problem)
                repairedFirst.corruptionsFixed += 1
            }
            m.openProblems = []
        }
        var s = try scan(&m)
        var res = s.res
        res.messages = repairedFirst.messages + res.messages
        res.corruptionsFixed += repairedFirst.corruptionsFixed
        let zeroReferenced = compare(&m, s, &res, repair: nil)
        if let mode = repair, s.needRebuild || zeroReferenced {
            guard mode == .all else {
                res.note("ERROR need to rebuild refcount structures")
                res.checkErrors += 1
                return res
            }
            // A referenced cluster with refcount 0 could be handed out again: rebuild every refcount.
            res.note("Rebuilding refcount structure")
            try rebuild(&m, s)
            s = try scan(&m)
            // The old structures are now leaked: freed quietly, not reported as repairs.
            var introduced = s.res
            introduced.messages = []
            _ = compare(&m, s, &introduced, repair: .leaks)
            res.messages += introduced.messages
            res.imageEndOffset = introduced.imageEndOffset
            // Every refcount found wrong so far is right now, as QEMU counts it.
            res.corruptionsFixed += res.corruptions
            res.leaksFixed += res.leaks
            res.corruptions = 0
            res.refcountErrors = 0
            res.leaks = 0
        } else if let mode = repair, res.leaks > 0 || res.refcountErrors > 0 {
            var fixed = s.res
            fixed.messages = []
            _ = compare(&m, s, &fixed, repair: mode)
            res.messages += fixed.messages
            res.imageEndOffset = fixed.imageEndOffset
            res.leaksFixed += fixed.leaksFixed
            res.corruptionsFixed += fixed.corruptionsFixed
            res.leaks -= fixed.leaksFixed
            res.corruptions -= fixed.corruptionsFixed
            res.refcountErrors -= fixed.corruptionsFixed
            s = try scan(&m)
        }
        try checkCopied(&m, s, &res, repair: repair == .all)
        if repair != nil && res.checkErrors == 0 && res.corruptions == 0 && m.header.incompatibleFeatures & QC.incompatCorrupt != 0 {
            // Repaired: the image may be written again.
            m.header.incompatibleFeatures &= ~QC.incompatCorrupt
            try m.writeHeaderFields(72, { var b = [UInt8](); b.append64(m.header.incompatibleFeatures); return b }())
            m.markedCorrupt = false
        }
        return res
    }

    struct Scan {
        var res: CheckResult
        var refs: [UInt32]
        var needRebuild: Bool
        /// COPIED flags to check, in QEMU's order: each active L1 entry, then the entries of its L2 table.
        var copied: [(cluster: UInt64, copied: Bool, message: String)]
    }

    /// Counts the references to every cluster, reporting what cannot be counted.
    static func scan(_ m: inout Meta) throws(DiskError) -> Scan {
        let file = m.file, g = m.g, cs = g.cs
        let physical = try file.size()
        let n = Int((physical + cs - 1) / cs)
        guard n <= maxClusters else { throw .unsupported("image file too large to check (\(n) clusters)") }
        var res = CheckResult()
        var refs = [UInt32](repeating: 0, count: n)
        var needRebuild = false
        res.totalClusters = (m.header.size + cs - 1) / cs
        for problem in m.openProblems {
            res.corruptions += 1
            res.note(problem)
        }

        // A region may reach less than a cluster past the end of the file (a last cluster written partly).
        func inc(_ off: UInt64, _ len: UInt64) {
            if len == 0 { return }
            let (end, overflow) = off.addingReportingOverflow(len)
            if overflow || end >= physical + cs {
                res.corruptions += 1
                res.note("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset \(hex(off)) size \(hex(len))")
                return
            }
            for c in Int(off / cs)...Int((end - 1) / cs) {
                if c >= refs.count { refs.append(contentsOf: repeatElement(0, count: c + 1 - refs.count)) }
                if refs[c] < UInt32.max { refs[c] += 1 }
            }
        }

        // Pass 1: L1 tables. Count how many times each L2 table is referenced.
        var l2Mult: [UInt64: UInt32] = [:]
        var activeL2: [(index: Int, entry: UInt64)] = []
        var work = 0
        inc(0, cs)
        var tables: [(off: UInt64, size: UInt32, active: Bool)] = [(m.header.l1TableOffset, m.header.l1Size, true)]
        for s in m.snapshots { tables.append((s.l1TableOffset, s.l1Size, false)) }
        for (ti, t) in tables.enumerated() {
            let what = t.active ? "active L1 table" : "L1 table of snapshot \(m.snapshots[ti - 1].id)"
            if t.size == 0 { continue }
            guard t.off % cs == 0 else { res.corruptions += 1; res.note("ERROR \(what) offset \(hex(t.off)) is not cluster aligned"); continue }
            inc(t.off, UInt64(t.size) * 8)
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
                inc(off, cs)
                if off >= physical { continue }
                l2Mult[off, default: 0] += 1
                if t.active { activeL2.append((i, e)) }
            }
        }
        // Pass 2: each distinct L2 table once.
        var copiedInL2: [UInt64: [(cluster: UInt64, copied: Bool, message: String)]] = [:]
        let activeOffsets = Set(activeL2.map { $0.entry & QC.l1OffsetMask })
        var nextContiguous: UInt64 = 0
        for (off, mult) in l2Mult.sorted(by: { $0.key < $1.key }) {
            let active = activeOffsets.contains(off)
            var raw = [UInt64](repeating: 0, count: Int(cs / 8))
            try rw(&raw) { (b) throws(DiskError) in try file.pread(b, at: off) }
            let step = g.ext ? 2 : 1
            var k = 0
            var checks: [(cluster: UInt64, copied: Bool, message: String)] = []
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
                    for _ in 0..<mult { inc(r.start, r.end - r.start) }
                    // Compressed clusters count as fragmented, as qemu-img counts them.
                    if active { res.allocatedClusters += 1; res.compressedClusters += 1; res.fragmentedClusters += 1 }
                case .normal, .zeroAlloc:
                    let host = e & QC.l2OffsetMask
                    if host % cs != 0 { res.corruptions += 1; res.note("ERROR \(where_): data cluster \(hex(host)) is not cluster aligned"); break }
                    for _ in 0..<mult { inc(host, cs) }
                    if active {
                        res.allocatedClusters += 1
                        if nextContiguous != 0 && host != nextContiguous { res.fragmentedClusters += 1 }
                        nextContiguous = host + cs
                        checks.append((host / cs, e & QC.copied != 0, "data cluster: l2_entry=\(String(e, radix: 16))"))
                    }
                default: break
                }
                k += step
            }
            if active { copiedInL2[off] = checks }
        }
        var copied: [(cluster: UInt64, copied: Bool, message: String)] = []
        for (index, entry) in activeL2 {
            let off = entry & QC.l1OffsetMask
            copied.append((off / cs, entry & QC.copied != 0, "L2 cluster: l1_index=\(index) l1_entry=\(String(entry, radix: 16))"))
            copied += copiedInL2[off] ?? []
        }
        if m.header.nbSnapshots > 0 { inc(m.header.snapshotsOffset, m.snapshotTableBytes) }
        // Persistent bitmaps (directory, tables, data) are referenced too: a repair must not free them.
        do throws(DiskError) {
            for r in try bitmapMetadataRanges(file, header: m.header) { inc(r.offset, r.length) }
        } catch {
            res.corruptions += 1
            res.note("ERROR bitmaps: \(error)")
        }
        let rtOff = m.header.refcountTableOffset
        inc(rtOff, UInt64(m.header.refcountTableClusters) * cs)
        var blocks: [UInt64] = []
        for (i, e) in m.refTable.enumerated() {
            if e == 0 { continue }
            if e & QC.rtReservedMask != 0 { res.corruptions += 1; needRebuild = true; res.note("ERROR refcount table entry \(i) has reserved bits set") ; continue }
            let off = e & QC.rtOffsetMask
            if off % cs != 0 { res.corruptions += 1; needRebuild = true; res.note("ERROR refcount block \(i) is not cluster aligned; refcount table entry corrupted"); continue }
            if off >= physical { res.corruptions += 1; needRebuild = true; res.note("ERROR refcount block \(i) is outside image"); continue }
            inc(off, cs)
            blocks.append(off / cs)
        }
        for b in blocks where refs[Int(b)] != 1 {
            res.corruptions += 1
            needRebuild = true
            res.note("ERROR refcount block at cluster \(b) is referenced \(refs[Int(b)]) times")
        }
        return Scan(res: res, refs: refs, needRebuild: needRebuild, copied: copied)
    }

    /// Compares the counted references with the stored refcounts, reporting (or, under `repair`, fixing) every
    /// difference; sets the image end offset. Returns whether a referenced cluster has refcount 0, which only
    /// a rebuild of the refcount structures repairs.
    static func compare(_ m: inout Meta, _ s: Scan, _ res: inout CheckResult, repair: RepairMode?) -> Bool {
        var zeroReferenced = false
        var end: UInt64 = 0
        if repair != nil { m.deferRefcounts = true }
        for c in s.refs.indices {
            let d: UInt64
            do { d = try m.refcount(UInt64(c)) } catch {
                res.corruptions += 1
                res.note("ERROR cannot read the refcount of cluster \(c): \(error)")
                continue
            }
            let r = UInt64(s.refs[c])
            if d > 0 || r > 0 { end = UInt64(c + 1) * m.cs }
            if d == r { continue }
            if d == 0 { zeroReferenced = true }
            let fixable = d != 0 && (d > r ? repair != nil : repair == .all)
            if fixable, (try? m.setRefcount(UInt64(c), r)) != nil {
                res.note("Repairing cluster \(c) refcount=\(d) reference=\(r)")
                if d > r { res.leaksFixed += 1 } else { res.corruptionsFixed += 1 }
                continue
            }
            res.note("\(d < r ? "ERROR" : "Leaked") cluster \(c) refcount=\(d) reference=\(r)")
            if d < r { res.corruptions += 1; res.refcountErrors += 1 } else { res.leaks += 1 }
        }
        if repair != nil { try? m.flushRefcounts() }
        res.imageEndOffset = end
        return zeroReferenced
    }

    /// COPIED must be set exactly where the refcount is 1.
    static func checkCopied(_ m: inout Meta, _ s: Scan, _ res: inout CheckResult, repair: Bool) throws(DiskError) {
        var wrong = 0
        for c in s.copied {
            let d = (try? m.refcount(c.cluster)) ?? 0
            if (d == 1) != c.copied {
                res.note("\(repair ? "Repairing" : "ERROR") OFLAG_COPIED \(c.message) refcount=\(d)")
                wrong += 1
            }
        }
        guard wrong > 0 else { return }
        if repair {
            try m.fixCopied()
            res.corruptionsFixed += wrong
        } else {
            res.corruptions += wrong
        }
    }

    /// Writes a complete new refcount table and blocks and switches to them. Like QEMU, it places them in the
    /// first free clusters (blocks one by one, then the table in one run), and leaves the old structures
    /// referenced, to be freed as leaks by the next comparison.
    static func rebuild(_ m: inout Meta, _ s: Scan) throws(DiskError) {
        let cs = m.cs, rbe = m.g.rbEntries
        var refs = s.refs.map { UInt64($0) }
        if refs.count < Int(m.endCluster) { refs.append(contentsOf: repeatElement(0, count: Int(m.endCluster) - refs.count)) }
        var searchFrom = 0
        /// First fit: `count` free clusters in a row, marked used.
        func allocate(_ count: Int) -> Int {
            var start = searchFrom
            while true {
                if start + count > refs.count { refs.append(contentsOf: repeatElement(0, count: start + count - refs.count)) }
                if let used = (start..<start + count).last(where: { refs[$0] != 0 }) { start = used + 1; continue }
                for c in start..<start + count { refs[c] = 1 }
                if count == 1 { searchFrom = start + 1 }
                return start
            }
        }
        var blocks: [Int] = []
        var table = -1, tableClusters = 0
        while true {
            while UInt64(blocks.count) * rbe < UInt64(refs.count) { blocks.append(allocate(1)) }
            let need = max(1, (blocks.count * 8 + Int(cs) - 1) / Int(cs))
            if need > tableClusters {
                if table >= 0 { for c in table..<table + tableClusters { refs[c] = 0 } }
                table = allocate(need)
                tableClusters = need
            }
            if UInt64(blocks.count) * rbe >= UInt64(refs.count) { break }
        }
        guard UInt64(tableClusters) * cs <= QC.maxRefTableBytes else { throw .unsupported("image too large to rebuild refcounts") }
        for (c, r) in refs.enumerated() where r > m.maxRefcount {
            throw .unsupported("cluster \(c) has \(r) references, more than \(1 << m.g.refOrder)-bit refcounts can hold")
        }
        m.rbCache = [:]
        m.rbFifo = []
        m.dirtyRB = []
        var entries = [UInt64](repeating: 0, count: tableClusters * Int(cs) / 8)
        for (b, cluster) in blocks.enumerated() {
            var block = [UInt8](repeating: 0, count: Int(cs))
            let low = b * Int(rbe)
            for c in low..<min(low + Int(rbe), refs.count) where refs[c] != 0 { _ = m.rbSet(&block, c - low, refs[c]) }
            try m.file.writeBytes(block, at: UInt64(cluster) * cs)
            entries[b] = UInt64(cluster) * cs
        }
        try m.file.writeBytes(Meta.l1Bytes(entries), at: UInt64(table) * cs)
        if try m.file.size() < UInt64(refs.count) * cs { try m.file.truncate(UInt64(refs.count) * cs) }
        try m.file.sync()
        var hb = [UInt8]()
        hb.append64(UInt64(table) * cs)
        hb.append32(UInt32(tableClusters))
        try m.writeHeaderFields(48, hb)
        m.header.refcountTableOffset = UInt64(table) * cs
        m.header.refcountTableClusters = UInt32(tableClusters)
        m.refTable = entries
        m.refTableDiskEntries = entries.count
        m.endCluster = max(m.endCluster, UInt64(refs.count))
        m.fileLimit = max(m.fileLimit, m.endCluster * cs)
        m.freeHint = 0
    }
}

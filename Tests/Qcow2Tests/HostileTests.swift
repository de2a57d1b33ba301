import Foundation
import Qcow2
import Testing

/// A corrupted image and what was done to it.
struct Mutant: CustomStringConvertible {
    var name: String
    var bytes: [UInt8]
    var description: String { name }
}

extension Array where Element == UInt8 {
    func with64(_ v: UInt64, at o: Int) -> [UInt8] {
        var a = self
        for i in 0..<8 { a[o + i] = UInt8(truncatingIfNeeded: v >> (56 - 8 * i)) }
        return a
    }
    func with32(_ v: UInt32, at o: Int) -> [UInt8] {
        var a = self
        for i in 0..<4 { a[o + i] = UInt8(truncatingIfNeeded: v >> (24 - 8 * i)) }
        return a
    }
    func get64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 << 8 | UInt64(self[o + $1]) } }
    func get32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 << 8 | UInt32(self[o + $1]) } }
}

/// A small valid image with data, a snapshot and a compressed cluster, and its corrupted variants.
func hostileCorpus(_ d: TempDir) throws -> [Mutant] {
    let p = d.file("good.qcow2")
    var o = Qcow2CreateOptions(size: 1 << 20)
    o.clusterSize = 4096
    try Qcow2Image.create(path: p, options: o)
    do {
        let img = try openRW(p)
        let buf = [UInt8](repeating: 0x61, count: 20000)
        try buf.withUnsafeBytes { try img.write(at: 0, from: $0) }
        try img.createSnapshot(name: "s")
        try buf.withUnsafeBytes { try img.write(at: 500_000, from: $0) }
        let z = [UInt8](repeating: 0x62, count: 4096)
        try z.withUnsafeBytes { try img.writeCompressed(cluster: 200, data: $0) }
        try img.finishWrites()
    }
    let good = readFile(p)
    let l1 = Int(good.get64(40)), rt = Int(good.get64(48)), snaps = Int(good.get64(64))
    let l2 = Int(good.get64(l1) & 0x00ff_ffff_ffff_fe00)
    let rb = Int(good.get64(rt))
    var out: [Mutant] = []
    for n in [0, 3, 20, 71, 100, 4095, 4096, 8192, good.count / 2, good.count - 1] {
        out.append(Mutant(name: "truncated to \(n)", bytes: Array(good.prefix(n))))
    }
    out += [
        Mutant(name: "bad magic", bytes: good.with32(0x1234_5678, at: 0)),
        Mutant(name: "version 4", bytes: good.with32(4, at: 4)),
        Mutant(name: "cluster_bits 8", bytes: good.with32(8, at: 20)),
        Mutant(name: "cluster_bits 40", bytes: good.with32(40, at: 20)),
        Mutant(name: "huge size", bytes: good.with64(1 << 62, at: 24)),
        Mutant(name: "huge size, small L1", bytes: good.with64(1 << 50, at: 24)),
        Mutant(name: "crypt method", bytes: good.with32(1, at: 32)),
        Mutant(name: "huge l1_size", bytes: good.with32(0xffff_ffff, at: 36)),
        Mutant(name: "l1_size past EOF", bytes: good.with32(100_000, at: 36)),
        Mutant(name: "L1 offset past EOF", bytes: good.with64(1 << 40, at: 40)),
        Mutant(name: "L1 offset misaligned", bytes: good.with64(UInt64(l1) + 8, at: 40)),
        Mutant(name: "refcount table past EOF", bytes: good.with64(1 << 40, at: 48)),
        Mutant(name: "refcount table zero", bytes: good.with64(0, at: 48)),
        Mutant(name: "huge refcount table", bytes: good.with32(0xffff_ffff, at: 56)),
        Mutant(name: "many snapshots", bytes: good.with32(0xffff_ffff, at: 60)),
        Mutant(name: "snapshot count past table", bytes: good.with32(5000, at: 60)),
        Mutant(name: "snapshot table past EOF", bytes: good.with64(1 << 40, at: 64)),
        Mutant(name: "unknown incompatible bit", bytes: good.with64(1 << 20, at: 72)),
        Mutant(name: "external data file bit", bytes: good.with64(1 << 2, at: 72)),
        Mutant(name: "compression type bit without type", bytes: good.with64(1 << 3, at: 72)),
        Mutant(name: "corrupt bit", bytes: good.with64(1 << 1, at: 72)),
        Mutant(name: "dirty bit", bytes: good.with64(1 << 0, at: 72)),
        Mutant(name: "refcount_order 7", bytes: good.with32(7, at: 96)),
        Mutant(name: "header_length huge", bytes: good.with32(1 << 20, at: 100)),
        Mutant(name: "header_length small", bytes: good.with32(50, at: 100)),
        Mutant(name: "extension overrun", bytes: good.with32(0xffff, at: 116)),
        Mutant(name: "backing name outside cluster 0", bytes: good.with64(4000, at: 8).with32(1000, at: 16)),
        Mutant(name: "backing file is itself", bytes: {
            var a = good
            let name = Array("m.qcow2".utf8)
            a.replaceSubrange(3000..<3000 + name.count, with: name)
            return a.with64(3000, at: 8).with32(UInt32(name.count), at: 16)
        }()),
        Mutant(name: "L2 pointer past EOF", bytes: good.with64((1 << 40) | (1 << 63), at: l1)),
        Mutant(name: "L2 pointer misaligned", bytes: good.with64(UInt64(l2 + 512) | (1 << 63), at: l1)),
        Mutant(name: "L2 pointer to header", bytes: good.with64(1 << 63, at: l1).with64(0, at: l1)),
        Mutant(name: "L2 pointer to the L1 table", bytes: good.with64(UInt64(l1) | (1 << 63), at: l1)),
        Mutant(name: "L2 pointer to the refcount block", bytes: good.with64(UInt64(rb) | (1 << 63), at: l1)),
        Mutant(name: "L1 reserved bits", bytes: good.with64(good.get64(l1) | 0x100, at: l1)),
        Mutant(name: "two L1 entries share an L2 table", bytes: good.with64(good.get64(l1), at: l1 + 8)),
        Mutant(name: "L2 entry points at its own table", bytes: good.with64(UInt64(l2) | (1 << 63), at: l2)),
        Mutant(name: "L2 entry past EOF", bytes: good.with64((1 << 45) | (1 << 63), at: l2 + 8)),
        Mutant(name: "L2 entry reserved bits", bytes: good.with64(good.get64(l2) | 0x2, at: l2)),
        Mutant(name: "L2 compressed garbage", bytes: good.with64((1 << 62) | 0x3fff_ffff_ffff_ffff, at: l2 + 16)),
        Mutant(name: "L2 compressed bad stream", bytes: good.with64((1 << 62) | 4096 * 2, at: l2 + 16)),
        Mutant(name: "refcount table entry past EOF", bytes: good.with64(1 << 40, at: rt)),
        Mutant(name: "refcount table entry misaligned", bytes: good.with64(UInt64(rb + 8), at: rt)),
        Mutant(name: "refcount block zeroed", bytes: {
            var a = good
            a.replaceSubrange(rb..<rb + 4096, with: repeatElement(0, count: 4096))
            return a
        }()),
        Mutant(name: "refcounts saturated", bytes: {
            var a = good
            a.replaceSubrange(rb..<rb + 4096, with: repeatElement(0xff, count: 4096))
            return a
        }()),
        Mutant(name: "snapshot table garbage", bytes: {
            var a = good
            var r = RNG(4)
            for i in snaps..<snaps + 200 { a[i] = UInt8(truncatingIfNeeded: r.next()) }
            return a
        }()),
        Mutant(name: "snapshot L1 huge", bytes: good.with32(0xffff_fff0, at: snaps + 8)),
        Mutant(name: "backing file names a directory", bytes: {
            var a = good
            let name = Array(".".utf8)
            a.replaceSubrange(3000..<3000 + name.count, with: name)
            return a.with64(3000, at: 8).with32(UInt32(name.count), at: 16)
        }()),
    ]
    // Random byte flips in the metadata clusters.
    var r = RNG(77)
    for k in 0..<60 {
        var a = good
        for _ in 0..<1 + Int(r.below(6)) {
            let region = [0, l1, l2, rt, rb, snaps][Int(r.below(6))]
            a[region + Int(r.below(256))] ^= UInt8(1 << r.below(8))
        }
        out.append(Mutant(name: "bit flips #\(k)", bytes: a))
    }
    return out
}

@Suite("hostile images get clear errors, never crashes or hangs", .serialized, .timeLimit(.minutes(2)))
struct HostileTests {
    @Test func corpus() throws {
        let d = TempDir()
        let corpus = try hostileCorpus(d)
        #expect(corpus.count > 100)
        for m in corpus {
            let p = d.file("m.qcow2")
            writeFile(p, m.bytes)
            let start = DispatchTime.now().uptimeNanoseconds
            // Read-only: open, read everything, check.
            do {
                let img = try Qcow2Image(path: p)
                _ = try? readAll(img, chunk: 65536)
                _ = try img.check()
            } catch {
                let s = "\(error)"
                #expect(!s.isEmpty && !s.contains("\n"), "\(m): \(s)")
            }
            // Read-write: write, snapshot, repair; all must fail cleanly or succeed.
            do {
                let img = try Qcow2Image(path: p, options: Qcow2OpenOptions(writable: true))
                let buf = [UInt8](repeating: 1, count: 9000)
                try? buf.withUnsafeBytes { try img.write(at: 1000, from: $0) }
                try? buf.withUnsafeBytes { try img.write(at: 200 * 4096, from: $0) }
                try? img.createSnapshot(name: "x")
                try? img.deleteSnapshot("s")
                _ = try? img.check(repair: true)
            } catch {
                #expect(!"\(error)".contains("\n"), "\(m)")
            }
            let ms = (DispatchTime.now().uptimeNanoseconds - start) / 1_000_000
            #expect(ms < 5000, "\(m) took \(ms) ms")
        }
    }

    @Test("refcount overflow is refused cleanly")
    func refcountOverflow() throws {
        let d = TempDir()
        let p = d.file("o.qcow2")
        var o = Qcow2CreateOptions(size: 1 << 20)
        o.clusterSize = 4096
        o.refcountBits = 2
        try Qcow2Image.create(path: p, options: o)
        let img = try openRW(p)
        let buf = [UInt8](repeating: 1, count: 9000)
        try buf.withUnsafeBytes { try img.write(at: 0, from: $0) }
        try img.createSnapshot(name: "a")
        try img.createSnapshot(name: "b")
        #expect(throws: DiskError.self) { try img.createSnapshot(name: "c") }
        #expect(try img.check().isClean)
        expectQemuClean(p)
        var o1 = o
        o1.refcountBits = 1
        try Qcow2Image.create(path: d.file("one.qcow2"), options: o1)
        #expect(throws: DiskError.self) { try openRW(d.file("one.qcow2")).createSnapshot(name: "x") }
        expectQemuClean(d.file("one.qcow2"))
    }

    @Test("a dirty image (lazy refcounts, writer killed) is repaired on read-write open")
    func dirtyImage() throws {
        let d = TempDir()
        let p = d.file("lazy.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4k", p, "1M").status == 0)
        guard let io = qemuIOPath() else { return }
        run(io, ["-f", "qcow2", "-c", "write -P 7 0 100k", "-c", "sigraise 9", p])
        #expect(qemuImg("check", p).status == 2, "the killed writer should leave stale refcounts")
        #expect(try Qcow2Image(path: p).header.incompatibleFeatures & 1 == 1)
        let img = try openRW(p)
        #expect(img.header.incompatibleFeatures & 1 == 0)
        #expect(try readAll(img).prefix(102_400).allSatisfy { $0 == 7 })
        #expect(try img.check().isClean)
        expectQemuClean(p)
    }

    @Test("check --repair fixes leaks")
    func repairLeaks() throws {
        let d = TempDir()
        let p = d.file("l.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", "-o", "cluster_size=4k", p, "1M").status == 0)
        qemuIO(p, ["write 0 64k"])
        // Leak clusters by raising their refcounts.
        var b = readFile(p)
        let rb = Int(b.get64(Int(b.get64(48))))
        b[rb + 2 * 5 + 1] = 3
        writeFile(p, b)
        #expect(qemuImg("check", p).status == 2 || qemuImg("check", p).status == 3)
        let r = try openRW(p).check(repair: true)
        #expect(r.isClean && r.leaksFixed + r.corruptionsFixed > 0)
        expectQemuClean(p)
    }
}

@Suite("lazy refcounts")
struct LazyRefcountTests {
    @Test("the dirty bit covers metadata writes between flushes")
    func dirtyBitBetweenFlushes() throws {
        let d = TempDir()
        let p = d.file("lazy.qcow2")
        var o = Qcow2CreateOptions(size: 2 << 20)
        o.clusterSize = 4096
        o.lazyRefcounts = true
        try Qcow2Image.create(path: p, options: o)
        #expect(readFile(p)[79] & 1 == 0)
        let model = Model(size: 2 << 20)
        let img = try openRW(p)
        try randomWorkload(img, model, ops: 10, seed: 3, discard: true)
        #expect(readFile(p)[79] & 1 == 1, "dirty while metadata changes are unflushed")
        // A copy taken now is what a power loss would leave: it opens, repairs and reads back.
        copyFile(p, d.file("crash.qcow2"))
        try img.flush()
        #expect(readFile(p)[79] & 1 == 0, "clean after flush")
        expectQemuClean(p)
        let c = try openRW(d.file("crash.qcow2"))
        #expect(try readAll(c) == model.bytes)
        try c.flush()
        expectQemuClean(d.file("crash.qcow2"))
        let info = qemuImg("info", "-U", "--output=json", p).out
        #expect(info.contains("\"lazy-refcounts\": true"))
    }
}

import Foundation
import Qcow2
import Testing

func openRW(_ path: String) throws -> Qcow2Image {
    try Qcow2Image(path: path, options: Qcow2OpenOptions(writable: true))
}

@Suite("qcow2 images Tern writes pass qemu-img", .serialized, .timeLimit(.minutes(5)))
struct TernWritesTests {
    @Test("random writes, zeroes and discards", arguments: [
        (512 as UInt64, 3 as UInt32, 16 as UInt32), (4096, 3, 1), (4096, 2, 16), (65536, 3, 64), (16384, 3, 8), (2 << 20, 3, 16),
    ])
    func randomWrites(cs: UInt64, version: UInt32, refBits: UInt32) throws {
        let d = TempDir()
        let path = d.file("a.qcow2")
        let size = cs >= 2 << 20 ? 12 << 20 : 3 << 20
        var o = Qcow2CreateOptions(size: UInt64(size))
        o.clusterSize = cs
        o.version = version
        o.refcountBits = refBits
        try Qcow2Image.create(path: path, options: o)
        expectQemuClean(path)
        let model = Model(size: size)
        do {
            let img = try openRW(path)
            try randomWorkload(img, model, ops: 60, seed: cs ^ UInt64(refBits), discard: true)
            #expect(try readAll(img) == model.bytes)
            try img.flush()
            let r = try img.check()
            #expect(r.isClean, "\(r.messages)")
        }
        writeFile(d.file("expect.raw"), model.bytes)
        expectQemuClean(path)
        expectQemuSame(path, d.file("expect.raw"))
    }

    @Test("extended L2 images Tern writes")
    func extendedL2Writes() throws {
        let d = TempDir()
        let path = d.file("x.qcow2")
        writeFile(d.file("base.raw"), (0..<(2 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        var o = Qcow2CreateOptions(size: 2 << 20)
        o.clusterSize = 65536
        o.extendedL2 = true
        o.backingFile = "base.raw"
        o.backingFormat = .raw
        try Qcow2Image.create(path: path, options: o)
        // qemu writes subclusters first; then Tern writes over them.
        qemuIO(path, ["write -P 0x41 4k 2k", "write -z 130k 8k"])
        let model = Model(size: 2 << 20, initial: readFile(d.file("base.raw")))
        model.bytes.replaceSubrange(4096..<6144, with: repeatElement(0x41, count: 2048))
        model.bytes.replaceSubrange(133120..<141312, with: repeatElement(0, count: 8192))
        do {
            let img = try openRW(path)
            #expect(try readAll(img) == model.bytes)
            var rng = RNG(9)
            try model.write(img, at: 5000, count: 3000, fill: 1, rng: &rng)
            try model.write(img, at: 200_000, count: 70000, fill: 2, rng: &rng)
            try model.zero(img, at: 65536 * 10, count: 65536 * 2)
            #expect(try readAll(img) == model.bytes)
        }
        writeFile(d.file("expect.raw"), model.bytes)
        expectQemuClean(path)
        expectQemuSame(path, d.file("expect.raw"))
    }

    @Test("backing chains: raw and qcow2 backing files, partial-cluster writes")
    func backingChain() throws {
        let d = TempDir()
        let size = 4 << 20
        var rng = RNG(3)
        let base = (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        writeFile(d.file("base.raw"), base)
        // qcow2 middle layer written by qemu.
        #expect(qemuImg("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", d.file("mid.qcow2")).status == 0)
        qemuIO(d.file("mid.qcow2"), ["write -P 0x5a 1M 300k", "write -z 3M 64k"])
        var o = Qcow2CreateOptions(size: UInt64(size))
        o.clusterSize = 4096
        o.backingFile = "mid.qcow2"
        o.backingFormat = .qcow2
        try Qcow2Image.create(path: d.file("top.qcow2"), options: o)
        var expect = base
        expect.replaceSubrange((1 << 20)..<((1 << 20) + 300 * 1024), with: repeatElement(0x5a, count: 300 * 1024))
        expect.replaceSubrange((3 << 20)..<((3 << 20) + 65536), with: repeatElement(0, count: 65536))
        let model = Model(size: size, initial: expect)
        do {
            let img = try openRW(d.file("top.qcow2"))
            #expect(try readAll(img) == model.bytes)
            try randomWorkload(img, model, ops: 40, seed: 11, discard: false)
            #expect(try readAll(img) == model.bytes)
        }
        writeFile(d.file("expect.raw"), model.bytes)
        expectQemuClean(d.file("top.qcow2"))
        expectQemuSame(d.file("top.qcow2"), d.file("expect.raw"))
        let info = qemuImg("info", "--output=json", d.file("top.qcow2")).out
        #expect(info.contains("\"backing-filename-format\": \"qcow2\""))
    }

    @Test("internal snapshots: create, apply, delete; qemu-img sees them")
    func snapshots() throws {
        let d = TempDir()
        let path = d.file("s.qcow2")
        let size = 2 << 20
        var o = Qcow2CreateOptions(size: UInt64(size))
        o.clusterSize = 4096
        try Qcow2Image.create(path: path, options: o)
        let model = Model(size: size)
        var states: [[UInt8]] = []
        do {
            let img = try openRW(path)
            for k in 0..<3 {
                try randomWorkload(img, model, ops: 20, seed: UInt64(k + 1), discard: true)
                try img.createSnapshot(name: "snap\(k)")
                states.append(model.bytes)
            }
            try randomWorkload(img, model, ops: 20, seed: 99, discard: true)
            #expect(try img.check().isClean)
        }
        expectQemuClean(path)
        let list = qemuImg("snapshot", "-l", path).out
        #expect(list.contains("snap0") && list.contains("snap2"))
        do {
            let img = try openRW(path)
            try img.applySnapshot("snap1")
            #expect(try readAll(img) == states[1])
            try img.deleteSnapshot("snap0")
            try img.deleteSnapshot("3")
        }
        expectQemuClean(path)
        writeFile(d.file("s1.raw"), states[1])
        expectQemuSame(path, d.file("s1.raw"))
        // qemu applies a snapshot Tern made.
        #expect(qemuImg("snapshot", "-a", "snap1", path).status == 0)
        expectQemuSame(path, d.file("s1.raw"))
        // Tern applies one qemu made.
        qemuIO(path, ["write -P 0x77 0 100k"])
        #expect(qemuImg("snapshot", "-c", "q", path).status == 0)
        var qstate = states[1]
        qstate.replaceSubrange(0..<102_400, with: repeatElement(0x77, count: 102_400))
        do {
            let img = try openRW(path)
            var rng = RNG(5)
            try Model(size: size).write(img, at: 0, count: 4096 * 30, fill: 3, rng: &rng)
            try img.applySnapshot("q")
            #expect(try readAll(img) == qstate)
        }
        expectQemuClean(path)
    }

    @Test("resize grow and shrink")
    func resize() throws {
        let d = TempDir()
        let path = d.file("r.qcow2")
        var o = Qcow2CreateOptions(size: 1 << 20)
        o.clusterSize = 512
        try Qcow2Image.create(path: path, options: o)
        let model = Model(size: 1 << 20)
        do {
            let img = try openRW(path)
            try randomWorkload(img, model, ops: 20, seed: 4, discard: true)
            try img.resize(to: 9 << 20)  // L1 must grow
            model.bytes += [UInt8](repeating: 0, count: 8 << 20)
            try randomWorkload(img, model, ops: 20, seed: 5, discard: true)
            try img.resize(to: 3 << 20 + 1000)
            model.bytes.removeLast(model.bytes.count - (3 << 20 + 1000))
            #expect(try readAll(img) == model.bytes)
            try img.resize(to: 4 << 20)
            model.bytes += [UInt8](repeating: 0, count: (4 << 20) - model.bytes.count)
            #expect(try readAll(img) == model.bytes)
        }
        writeFile(d.file("expect.raw"), model.bytes)
        expectQemuClean(path)
        expectQemuSame(path, d.file("expect.raw"))
    }

    @Test("preallocation metadata and full")
    func preallocation() throws {
        let d = TempDir()
        for p in [Preallocation.metadata, .full] {
            let path = d.file("p-\(p).qcow2")
            var o = Qcow2CreateOptions(size: 3 << 20)
            o.clusterSize = 4096
            o.preallocation = p
            try Qcow2Image.create(path: path, options: o)
            expectQemuClean(path)
            let model = Model(size: 3 << 20)
            do {
                let img = try openRW(path)
                #expect(try readAll(img) == model.bytes)
                try randomWorkload(img, model, ops: 10, seed: 8, discard: false)
            }
            writeFile(d.file("e.raw"), model.bytes)
            expectQemuClean(path)
            expectQemuSame(path, d.file("e.raw"))
        }
    }

    @Test("convert raw to compressed qcow2 and back; commit; rebase")
    func convertCommitRebase() throws {
        let d = TempDir()
        let size = 3 << 20
        var bytes = [UInt8](repeating: 0, count: size)
        for i in stride(from: 0, to: size / 2, by: 1) { bytes[i] = UInt8((i / 1000) & 0xff) }  // compressible
        var rng = RNG(2)
        for i in (size / 2)..<(size / 2 + 100_000) { bytes[i] = UInt8(truncatingIfNeeded: rng.next()) }
        writeFile(d.file("src.raw"), bytes)
        let src = try openImage(path: d.file("src.raw"), format: .raw)
        var co = ConvertOptions()
        co.compress = true
        co.create.clusterSize = 4096
        try convert(src, to: d.file("c.qcow2"), options: co)
        expectQemuClean(d.file("c.qcow2"))
        expectQemuSame(d.file("c.qcow2"), d.file("src.raw"))
        let check = qemuImg("check", "--output=json", d.file("c.qcow2")).out
        #expect(check.contains("compressed-clusters"))
        var ro = ConvertOptions()
        ro.format = .raw
        try convert(try openImage(path: d.file("c.qcow2")), to: d.file("back.raw"), options: ro)
        #expect(readFile(d.file("back.raw")) == bytes)

        // commit: overlay writes land in the base.
        var o = Qcow2CreateOptions(size: UInt64(size))
        o.backingFile = "c.qcow2"
        o.backingFormat = .qcow2
        o.clusterSize = 4096
        try Qcow2Image.create(path: d.file("top.qcow2"), options: o)
        let model = Model(size: size, initial: bytes)
        do {
            let top = try openRW(d.file("top.qcow2"))
            try randomWorkload(top, model, ops: 15, seed: 21, discard: false)
        }
        try commit(path: d.file("top.qcow2"))
        writeFile(d.file("m.raw"), model.bytes)
        expectQemuClean(d.file("c.qcow2"))
        expectQemuClean(d.file("top.qcow2"))
        expectQemuSame(d.file("c.qcow2"), d.file("m.raw"))
        expectQemuSame(d.file("top.qcow2"), d.file("m.raw"))

        // rebase: top onto the raw source keeps the guest view.
        do {
            let top = try openRW(d.file("top.qcow2"))
            var r2 = RNG(1)
            try model.write(top, at: 5000, count: 10000, fill: 9, rng: &r2)
        }
        writeFile(d.file("m.raw"), model.bytes)
        try rebase(path: d.file("top.qcow2"), newBacking: "src.raw", format: .raw, unsafe: false)
        expectQemuClean(d.file("top.qcow2"))
        expectQemuSame(d.file("top.qcow2"), d.file("m.raw"))
        #expect(qemuImg("info", d.file("top.qcow2")).out.contains("backing file format: raw"))
    }

    @Test("concurrent writers and readers")
    func concurrency() throws {
        let d = TempDir()
        let path = d.file("c.qcow2")
        var o = Qcow2CreateOptions(size: 8 << 20)
        o.clusterSize = 4096
        try Qcow2Image.create(path: path, options: o)
        let img = try openRW(path)
        let threads = 4
        let per = (8 << 20) / threads
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            var rng = RNG(UInt64(t + 1))
            let buf = [UInt8](repeating: UInt8(t + 1), count: 6000)
            for _ in 0..<200 {
                let off = t * per + Int(rng.below(UInt64(per - buf.count)))
                buf.withUnsafeBytes { try! img.write(at: UInt64(off), from: $0) }
                var rb = [UInt8](repeating: 0, count: 6000)
                rb.withUnsafeMutableBytes { try! img.read(at: UInt64(off), into: $0) }
                #expect(rb == buf)
            }
        }
        try img.flush()
        #expect(try img.check().isClean)
        expectQemuClean(path)
    }
}

@Suite("qcow2 images qemu-img writes read back through Tern", .serialized, .timeLimit(.minutes(3)))
struct QemuWritesTests {
    /// Builds an image with qemu tools, then compares Tern's view with `qemu-img convert -O raw`.
    func compareWithQemu(_ path: String, _ d: TempDir, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let raw = d.file("qemu-view.raw")
        let r = qemuImg("convert", "-O", "raw", path, raw)
        #expect(r.status == 0, "\(r.err)", sourceLocation: sourceLocation)
        let img = try Qcow2Image(path: path)
        #expect(try readAll(img, chunk: 12345) == readFile(raw), sourceLocation: sourceLocation)
        #expect(try img.check().isClean, sourceLocation: sourceLocation)
    }

    @Test("every cluster size, with zero clusters", arguments: [512, 1024, 4096, 65536, 2 << 20])
    func clusterSizes(cs: Int) throws {
        let d = TempDir()
        let p = d.file("q.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", "-o", "cluster_size=\(cs)", p, "6M").status == 0)
        qemuIO(p, ["write -P 0x11 0 100k", "write -P 0x22 1000k 3M", "write -z 2M 512k", "write -P 0x33 5M 1k", "discard 1M 64k"])
        try compareWithQemu(p, d)
    }

    @Test("compressed clusters: deflate and zstd", arguments: ["zlib", "zstd"])
    func compressed(type: String) throws {
        let d = TempDir()
        var bytes = [UInt8](repeating: 0, count: 2 << 20)
        for i in bytes.indices where (i / 4096) % 3 != 0 { bytes[i] = UInt8((i / 100) & 0xff) }
        writeFile(d.file("src.raw"), bytes)
        for cs in [4096, 65536] {
            let p = d.file("c\(cs).qcow2")
            #expect(qemuImg("convert", "-c", "-O", "qcow2", "-o", "cluster_size=\(cs),compression_type=\(type)", d.file("src.raw"), p).status == 0)
            try compareWithQemu(p, d)
            #expect(try Qcow2Image(path: p, options: { var o = Qcow2OpenOptions(); o.forceShare = true; return o }()).check().compressedClusters > 0)
            // Overwriting part of a compressed cluster copies it out.
            let rw = try openRW(p)
            var rng = RNG(1)
            let model = Model(size: bytes.count, initial: bytes)
            try model.write(rw, at: 5000, count: 300, fill: 1, rng: &rng)
            try model.zero(rw, at: 65536, count: 65536)
            #expect(try readAll(rw) == model.bytes)
            expectQemuClean(p)
        }
    }

    @Test("extended L2 subclusters")
    func extendedL2() throws {
        let d = TempDir()
        let p = d.file("x.qcow2")
        writeFile(d.file("b.raw"), [UInt8](repeating: 0xee, count: 1 << 20))
        #expect(qemuImg("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", "-b", "b.raw", "-F", "raw", p).status == 0)
        qemuIO(p, ["write -P 0x1 0 2k", "write -P 0x2 6k 3k", "write -z 70k 4k", "write -P 0x3 200k 128k", "discard 300k 2k"])
        try compareWithQemu(p, d)
    }

    @Test("snapshots and backing chains")
    func snapshotsAndChains() throws {
        let d = TempDir()
        let base = d.file("base.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", base, "4M").status == 0)
        qemuIO(base, ["write -P 0x10 0 4M"])
        #expect(qemuImg("snapshot", "-c", "one", base).status == 0)
        qemuIO(base, ["write -P 0x20 1M 1M"])
        let top = d.file("top.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "cluster_size=4k", top).status == 0)
        qemuIO(top, ["write -P 0x30 100k 50k", "write -z 3M 100k"])
        try compareWithQemu(top, d)
        try compareWithQemu(base, d)
        // Tern applies qemu's snapshot.
        let img = try openRW(base)
        try img.applySnapshot("one")
        #expect(try readAll(img) == [UInt8](repeating: 0x10, count: 4 << 20))
        expectQemuClean(base)
    }

    @Test("v2 (compat 0.10) images")
    func v2() throws {
        let d = TempDir()
        let p = d.file("v2.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", "-o", "compat=0.10", p, "2M").status == 0)
        qemuIO(p, ["write -P 0x44 10k 200k"])
        try compareWithQemu(p, d)
        let img = try openRW(p)
        let model = Model(size: 2 << 20, initial: try readAll(img))
        try randomWorkload(img, model, ops: 20, seed: 2, discard: true)
        #expect(try readAll(img) == model.bytes)
        expectQemuClean(p)
    }
}

@Suite("tern image info agrees with qemu-img info")
struct InfoTests {
    @Test func infoJSON() throws {
        let d = TempDir()
        writeFile(d.file("b.raw"), [UInt8](repeating: 1, count: 1 << 20))
        var o = Qcow2CreateOptions(size: 3 << 20)
        o.clusterSize = 16384
        o.backingFile = "b.raw"
        o.backingFormat = .raw
        try Qcow2Image.create(path: d.file("i.qcow2"), options: o)
        try openRW(d.file("i.qcow2")).createSnapshot(name: "first")
        #expect(qemuImg("create", "-f", "qcow2", "-o", "compat=0.10,cluster_size=1024", d.file("v2.qcow2"), "1M").status == 0)
        #expect(qemuImg("create", "-f", "qcow2", "-o", "extended_l2=on,refcount_bits=8,compression_type=zstd", d.file("x.qcow2"), "1M").status == 0)
        for name in ["i.qcow2", "v2.qcow2", "x.qcow2", "b.raw"] {
            let p = d.file(name)
            let q = qemuImg("info", "--output=json", p)
            #expect(q.status == 0)
            let theirs = try JSONSerialization.jsonObject(with: Data(q.out.utf8)) as! [String: Any]
            let ours = try JSONSerialization.jsonObject(with: Data(imageInfo(path: p).render().utf8)) as! [String: Any]
            for key in ["virtual-size", "format", "cluster-size", "backing-filename", "backing-filename-format",
                        "full-backing-filename", "dirty-flag", "filename"] {
                #expect(String(describing: ours[key]) == String(describing: theirs[key]), "\(name): \(key)")
            }
            let fs1 = (theirs["format-specific"] as? [String: Any])?["data"] as? [String: Any] ?? [:]
            let fs2 = (ours["format-specific"] as? [String: Any])?["data"] as? [String: Any] ?? [:]
            for (k, v) in fs1 { #expect(fs2[k].map { String(describing: $0) } == String(describing: v), "\(name): format-specific \(k)") }
            let s1 = theirs["snapshots"] as? [[String: Any]] ?? [], s2 = ours["snapshots"] as? [[String: Any]] ?? []
            #expect(s1.count == s2.count)
            for (a, b) in zip(s1, s2) {
                for k in ["id", "name", "vm-state-size", "date-sec", "date-nsec", "vm-clock-sec", "vm-clock-nsec"] {
                    #expect(String(describing: a[k]) == String(describing: b[k]), "\(name): snapshot \(k)")
                }
            }
        }
    }
}

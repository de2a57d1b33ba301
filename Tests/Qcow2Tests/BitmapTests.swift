import Foundation
import Qcow2
import Testing

@Suite("persistent dirty bitmaps are shared with QEMU", .serialized, .timeLimit(.minutes(2)))
struct BitmapTests {
    @Test("Tern's bitmaps: qemu-img lists them, checks clean, merges and copies their bits; Tern reads QEMU's")
    func interop() throws {
        let d = TempDir()
        let img = d.file("b.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", img, "10M").status == 0)
        #expect(tern("bitmap", "--add", "-g", "64k", img, "a").status == 0)
        try editBitmaps(path: img, name: "a", [.markDirty(offset: 100 << 10, length: 200 << 10), .markDirty(offset: 5 << 20, length: 1)])
        #expect(try dirtyRanges(path: img, bitmap: "a") == [(64 << 10)..<(320 << 10), (5 << 20)..<((5 << 20) + (64 << 10))])
        expectQemuClean(img)
        // QEMU merges Tern's bits into a bitmap of another granularity: the bit order and ranges agree.
        #expect(qemuImg("bitmap", "--add", "-g", "128k", img, "b").status == 0)
        #expect(qemuImg("bitmap", "--merge", "a", img, "b").status == 0)
        #expect(try dirtyRanges(path: img, bitmap: "b") == [0..<(384 << 10), (5 << 20)..<((5 << 20) + (128 << 10))])
        // QEMU copies the bitmaps into a new image; Tern reads the copy.
        #expect(qemuImg("convert", "--bitmaps", "-O", "qcow2", img, d.file("copy.qcow2")).status == 0)
        #expect(try dirtyRanges(path: d.file("copy.qcow2"), bitmap: "a") == dirtyRanges(path: img, bitmap: "a"))
        // Tern merges a bitmap from another image, clears, disables and removes.
        #expect(tern("bitmap", "--add", img, "c").status == 0)
        #expect(tern("bitmap", "--merge", "b", "-b", d.file("copy.qcow2"), "-F", "qcow2", img, "c").status == 0)
        #expect(try dirtyRanges(path: img, bitmap: "c") == dirtyRanges(path: img, bitmap: "b"))
        #expect(tern("bitmap", "--disable", img, "c").status == 0)
        #expect(tern("bitmap", "--clear", img, "a").status == 0)
        #expect(try dirtyRanges(path: img, bitmap: "a").isEmpty)
        expectQemuClean(img)
        expectSameAsQemu(["info", img], in: d.path)
        expectSameAsQemu(["info", "--output", "json", img], in: d.path)
        expectSameAsQemu(["measure", "-O", "qcow2", img], in: d.path)
        let info = qemuImg("info", "--output=json", img).out
        #expect(info.contains("\"name\": \"c\"") && info.contains("\"granularity\": 131072"))
        // Amending other options keeps the bitmaps valid.
        #expect(tern("amend", "-o", "lazy_refcounts=on", img).status == 0)
        #expect(qemuImg("info", img).out.contains("name: c"))
        expectQemuClean(img)
        for name in ["a", "b", "c"] { #expect(tern("bitmap", "--remove", img, name).status == 0) }
        #expect(!qemuImg("info", img).out.contains("bitmaps"))
        expectQemuClean(img)
    }

    @Test("errors name the operation and the bitmap, as qemu-img; usage errors exit 2")
    func errors() throws {
        let d = TempDir()
        let img = d.file("e.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", img, "1M").status == 0)
        #expect(tern("bitmap", "--add", img, "x").status == 0)
        let twice = tern("bitmap", "--add", img, "x")
        #expect(twice.status == 1 && twice.err.contains("Operation add on bitmap x failed: Bitmap already exists: x"))
        let missing = tern("bitmap", "--remove", img, "nope")
        #expect(missing.status == 1 && missing.err.contains("Dirty bitmap 'nope' not found"))
        #expect(tern("bitmap", img, "x").status == 2)
        #expect(tern("bitmap", "--add", "-g", "1000", img, "y").status == 1)
        #expect(qemuImg("create", "-f", "qcow2", "-o", "compat=0.10", d.file("v2.qcow2"), "1M").status == 0)
        #expect(tern("bitmap", "--add", d.file("v2.qcow2"), "x").err.contains("compat=1.1"))
        expectQemuClean(img)
    }

    @Test("tern image check counts bitmap clusters as referenced; a repair keeps QEMU's bitmaps")
    func checkKeepsBitmaps() throws {
        let d = TempDir()
        let img = d.file("c.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", img, "10M").status == 0)
        #expect(qemuImg("bitmap", "--add", img, "q").status == 0)
        #expect(tern("bitmap", "--add", "-g", "4k", img, "t").status == 0)
        try editBitmaps(path: img, name: "t", [.markDirty(offset: 0, length: 10 << 20)])
        #expect(tern("check", img).status == 0)
        #expect(tern("check", "-r", "all", img).status == 0)
        expectQemuClean(img)
        #expect(try dirtyRanges(path: img, bitmap: "t") == [0..<(10 << 20)])
        #expect(qemuImg("info", img).out.contains("name: q"))
    }

    @Test("a writable open keeps the bitmaps valid until guest data is written; the first write marks them stale")
    func writableOpenKeepsBitmapsUntilWrite() throws {
        let d = TempDir()
        let img = d.file("w.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", img, "10M").status == 0)
        #expect(tern("bitmap", "--add", img, "a").status == 0)
        do {
            var o = Qcow2OpenOptions(writable: true)
            o.openBacking = false
            let image = try Qcow2Image(path: img, options: o)
            #expect(try readAll(image).count == 10 << 20)
            try image.flush()
        }
        // Opened for writing, read, flushed: nothing the bitmap tracks changed.
        #expect(try Qcow2Image(path: img).bitmaps.map(\.name) == ["a"])
        #expect(qemuImg("info", img).out.contains("name: a"))
        expectQemuClean(img)
        do {
            let image = try Qcow2Image(path: img, options: Qcow2OpenOptions(writable: true))
            let data = [UInt8](repeating: 7, count: 4096)
            try data.withUnsafeBytes { try image.write(at: 1 << 20, from: $0) }
            try image.flush()
        }
        // A guest write the bitmap did not record: its autoclear bit is cleared, so neither Tern nor QEMU trusts it.
        #expect(try Qcow2Image(path: img).bitmaps.isEmpty)
        #expect(!qemuImg("info", img).out.contains("name: a"))
    }

    @Test("a bitmap above QEMU's 512 MiB limit is refused before its bits are allocated")
    func tooLargeBitmapRefused() throws {
        let d = TempDir()
        let img = d.file("big.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", img, "64T").status == 0)
        // 64 TiB at 512-byte granularity would be 16 GiB of bits.
        #expect(throws: DiskError.self) { try editBitmaps(path: img, name: "fine", [.add(granularity: 512)]) }
        #expect(try Qcow2Image(path: img).bitmaps.isEmpty)
        // 1 MiB granularity needs 8 MiB: allowed.
        try editBitmaps(path: img, name: "coarse", [.add(granularity: 1 << 20)])
        #expect(try Qcow2Image(path: img).bitmaps.map(\.name) == ["coarse"])
    }

    @Test("removing a bitmap whose table names the L1 table frees nothing and names the damage")
    func hostileBitmapTableFreesNothing() throws {
        let d = TempDir()
        let img = d.file("hostile.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", img, "10M").status == 0)
        try editBitmaps(path: img, name: "a", [.add(granularity: 65536), .markDirty(offset: 0, length: 1 << 20)])
        let table = try #require(try Qcow2Image(path: img).bitmaps.first?.tableOffset)
        // Point the table's first entry at the L1 table (header bytes 40-47, big-endian).
        var bytes = readFile(img)
        let l1 = bytes[40..<48].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        for index in 0..<8 { bytes[Int(table) + index] = UInt8(truncatingIfNeeded: l1 >> (56 - 8 * UInt64(index))) }
        writeFile(img, bytes)
        let before = readFile(img)
        #expect(throws: DiskError.self) { try editBitmaps(path: img, name: "a", [.remove]) }
        let removal = tern("bitmap", "--remove", img, "a")
        #expect(removal.status != 0)
        #expect(removal.err.contains("not one of its data clusters"), "\(removal.err)")
        // Nothing was freed or rewritten: the file is as it was, and guest data still reads.
        let unchanged = readFile(img) == before
        #expect(unchanged, "the refused removal changed the image")
        #expect(try readAll(Qcow2Image(path: img)).count == 10 << 20)
    }
}

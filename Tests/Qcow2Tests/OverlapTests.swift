import Foundation
import Qcow2
import Testing

@Suite("writes over metadata are refused as QEMU's overlap check refuses them", .serialized)
struct OverlapTests {
    /// A 1 MiB image (4 KiB clusters) written by qemu-io, whose first L2 entry is then pointed at the cluster
    /// holding the metadata `target` picks from (L1 offset, refcount table offset).
    func craft(_ d: TempDir, _ name: String, target: (_ l1: Int, _ refcountTable: Int, _ bytes: [UInt8]) -> Int) -> String {
        let p = d.file(name)
        #expect(qemuImg("create", "-f", "qcow2", "-o", "cluster_size=4k", p, "1M").status == 0)
        qemuIO(p, ["write -P 1 0 4k"])
        var b = readFile(p)
        let l1 = Int(b.get64(40)), rt = Int(b.get64(48))
        let l2 = Int(b.get64(l1) & 0x00ff_ffff_ffff_fe00)
        b.set64(UInt64(target(l1, rt, b)) | 1 << 63, at: l2)
        writeFile(p, b)
        return p
    }

    @Test("a data write aimed at the L1 table or a refcount block fails and marks the image corrupt, as in QEMU",
          arguments: ["active L1 table", "refcount block"])
    func refused(kind: String) throws {
        let d = TempDir()
        let tern = craft(d, "tern.qcow2") { l1, rt, b in kind == "refcount block" ? Int(b.get64(rt)) : l1 }
        let qemu = d.file("qemu.qcow2")
        copyFile(tern, qemu)
        let before = readFile(tern)
        do {
            let img = try openRW(tern)
            let data = [UInt8](repeating: 2, count: 512)
            #expect(throws: DiskError.self) { try data.withUnsafeBytes { try img.write(at: 0, from: $0) } }
            // Every later write is refused, not only the one that hit metadata.
            #expect(throws: DiskError.readOnly("the image was marked corrupt; writes are refused until `tern image check -r all` repairs it")) {
                try data.withUnsafeBytes { try img.write(at: 512 << 10, from: $0) }
            }
        }
        let after = readFile(tern)
        #expect(after[79] & 2 == 2, "the corrupt bit is set")
        var unmarked = after
        unmarked[79] &= ~2
        #expect(unmarked == before, "nothing but the corrupt bit changed: the \(kind) is intact")
        // QEMU, given the same image and write, leaves the same bytes and the same check report.
        let io = run(qemuIOPath() ?? "", ["-c", "write -P 2 0 512", qemu])
        #expect(io.err.contains("overlaps with \(kind)"), "\(io.err)")
        #expect(readFile(qemu) == after)
        let check = qemuImg("check", tern)
        #expect(check.status == 2)
        #expect(check.out == qemuImg("check", qemu).out)
        #expect(throws: DiskError.readOnly("the image is marked corrupt; writes are forbidden (run check --repair)")) {
            _ = try openRW(tern)
        }
    }

    @Test("the hit is logged once, naming the image, the offset and the metadata")
    func loggedOnce() throws {
        let d = TempDir()
        var l1 = 0
        let p = craft(d, "log.qcow2") { offset, _, _ in l1 = offset; return offset }
        // Ten writes at guest offset 0, the first of which hits the L1 table.
        let r = tern("bench", ["-w", "-c", "10", "-d", "1", "-s", "512", p])
        #expect(r.status == 1)
        let lines = r.err.split(separator: "\n").filter { $0.contains("marking the image corrupt") }
        #expect(lines == ["tern: \(p): marking the image corrupt: a write at host offset 0x\(String(l1, radix: 16)) would overwrite the active L1 table; further writes are refused"])
    }

    @Test("writes that miss metadata pass the check; metadata moves are tracked")
    func cleanWritesPass() throws {
        let d = TempDir()
        let p = d.file("a.qcow2")
        var o = Qcow2CreateOptions(size: 8 << 20)
        o.clusterSize = 4096
        try Qcow2Image.create(path: p, options: o)
        let model = Model(size: 8 << 20)
        do {
            let img = try openRW(p)
            try randomWorkload(img, model, ops: 80, seed: 11, discard: true)
            try img.createSnapshot(name: "s")
            try randomWorkload(img, model, ops: 40, seed: 12, discard: true)
            try img.resize(to: 16 << 20)
            model.bytes += [UInt8](repeating: 0, count: 8 << 20)
            try randomWorkload(img, model, ops: 40, seed: 13, discard: true)
            #expect(try readAll(img) == model.bytes)
            try img.flush()
        }
        #expect(readFile(p)[79] & 2 == 0)
        expectQemuClean(p)
    }

    @Test("a data write aimed at the bitmap directory fails and marks the image corrupt")
    func bitmapDirectoryRefused() throws {
        let d = TempDir()
        let p = d.file("bitmap.qcow2")
        #expect(qemuImg("create", "-f", "qcow2", "-o", "cluster_size=4k", p, "1M").status == 0)
        qemuIO(p, ["write -P 1 0 4k"])
        #expect(qemuImg("bitmap", "--add", p, "b").status == 0)
        var b = readFile(p)
        // The bitmaps header extension (type 0x23852875) holds the directory offset at bytes 16..<24 of its data.
        var at = Int(b.get32(100)), directory = 0
        while at + 8 <= b.count, b.get32(at) != 0 {
            let length = Int(b.get32(at + 4))
            if b.get32(at) == 0x2385_2875 { directory = Int(b.get64(at + 8 + 16)) }
            at += 8 + (length + 7) & ~7
        }
        #expect(directory != 0)
        let l2 = Int(b.get64(Int(b.get64(40))) & 0x00ff_ffff_ffff_fe00)
        b.set64(UInt64(directory) | 1 << 63, at: l2)
        writeFile(p, b)
        let img = try openRW(p)
        let data = [UInt8](repeating: 2, count: 512)
        #expect(throws: DiskError.self) { try data.withUnsafeBytes { try img.write(at: 0, from: $0) } }
        #expect(readFile(p)[79] & 2 == 2, "the corrupt bit is set")
    }
}

extension Array where Element == UInt8 {
    mutating func set64(_ v: UInt64, at o: Int) {
        for i in 0..<8 { self[o + i] = UInt8(truncatingIfNeeded: v >> (56 - 8 * i)) }
    }
}

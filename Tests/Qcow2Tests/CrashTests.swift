import Foundation
import Qcow2
import TestSupport
import Testing

/// Runs `workload` with a file that stops accepting writes after `limit` operations.
/// Returns how many operations the workload performed (when it was not cut short).
@discardableResult
func runCut(_ path: String, limit: Int, _ workload: (Qcow2Image) throws -> Void) -> Int {
    do {
        let f = FaultInjectingFile(try PosixFile(path: path, writable: true), failAfter: limit)
        let img = try Qcow2Image(file: f, path: path, options: Qcow2OpenOptions(writable: true))
        do { try workload(img) } catch let e as DiskError where e == injectedFault {}
        return f.operations
    } catch {
        Issue.record("unexpected error: \(error)")
        return 0
    }
}

func copyFile(_ a: String, _ b: String) {
    try? FileManager.default.removeItem(atPath: b)
    try! FileManager.default.copyItem(atPath: a, toPath: b)
}

/// For every crash point N of a workload: no corruption (leaks allowed), and repair leaves a clean image.
func crashSweep(template: String, dir: TempDir, step: Int = 1, allowCopiedMismatch: Bool = false,
                _ workload: @escaping (Qcow2Image) throws -> Void) -> Int {
    let work = dir.file("work.qcow2")
    copyFile(template, work)
    let total = runCut(work, limit: Int.max, workload)
    #expect(total > 10, "workload performed only \(total) writes")
    var n = 0
    while n <= total {
        copyFile(template, work)
        runCut(work, limit: n, workload)
        let q = qemuImg("check", "-f", "qcow2", work)
        if allowCopiedMismatch {
            // Only refcount=1 entries whose COPIED is clear may be flagged (harmless: they get copied on write).
            let bad = q.out.split(separator: "\n").filter { $0.hasPrefix("ERROR") && !$0.contains("OFLAG_COPIED") }
            #expect(bad.isEmpty, "crash after \(n) writes: \(bad)")
        } else {
            #expect(q.status == 0 || q.status == 3, "crash after \(n) writes: qemu-img check status \(q.status)\n\(q.out)")
        }
        do {
            let img = try Qcow2Image(path: work, options: Qcow2OpenOptions(writable: true))
            _ = try readAll(img)
            let r = try img.check(repair: true)
            #expect(r.isClean, "crash after \(n) writes: our repair left \(r.messages.suffix(5))")
        } catch {
            Issue.record("crash after \(n) writes: \(error)")
        }
        let q2 = qemuImg("check", "-f", "qcow2", work)
        #expect(q2.status == 0, "crash after \(n) writes, after repair: \(q2.out)")
        n += step
    }
    return total
}

@Suite("crash safety: a write stream cut at every point", .serialized)
struct CrashTests {
    @Test("allocating writes, L2 allocation, discard and refcount table growth")
    func writesAndGrowth() throws {
        let d = TempDir()
        let t = d.file("t.qcow2")
        var o = Qcow2CreateOptions(size: 4 << 20)
        o.clusterSize = 512
        o.refcountBits = 64  // 64 clusters per refcount block, a one-cluster table covers 2 MiB
        try Qcow2Image.create(path: t, options: o)
        do {
            // Fill up to just below the point where the refcount table must grow.
            let img = try openRW(t)
            let buf = [UInt8](repeating: 0x3c, count: 64 * 1024)
            for k in 0..<28 { try buf.withUnsafeBytes { try img.write(at: UInt64(k) * 65536, from: $0) } }
        }
        expectQemuClean(t)
        let total = crashSweep(template: t, dir: d) { img in
            var rng = RNG(7)
            for i in 0..<12 {
                let off = UInt64(2 << 20) + rng.below(1 << 20)
                let buf = [UInt8](repeating: UInt8(i), count: 700 + Int(rng.below(3000)))
                try buf.withUnsafeBytes { try img.write(at: off, from: $0) }
            }
            try img.discard(at: 0, length: 8192)
            try img.writeZeroes(at: 65536, length: 4096)
            let buf = [UInt8](repeating: 9, count: 1000)
            try buf.withUnsafeBytes { try img.write(at: 100, from: $0) }
        }
        #expect(total > 50)
    }

    @Test("snapshot create, copy-on-write, apply and delete")
    func snapshots() throws {
        let d = TempDir()
        let t = d.file("t.qcow2")
        var o = Qcow2CreateOptions(size: 1 << 20)
        o.clusterSize = 4096
        try Qcow2Image.create(path: t, options: o)
        do {
            let img = try openRW(t)
            let buf = [UInt8](repeating: 0x11, count: 40000)
            try buf.withUnsafeBytes { try img.write(at: 0, from: $0) }
            try buf.withUnsafeBytes { try img.write(at: 600_000, from: $0) }
            try img.createSnapshot(name: "base")
        }
        _ = crashSweep(template: t, dir: d, allowCopiedMismatch: true) { img in
            let buf = [UInt8](repeating: 0x22, count: 5000)
            try buf.withUnsafeBytes { try img.write(at: 1000, from: $0) }  // copy-on-write of shared clusters
            try img.createSnapshot(name: "two")
            try buf.withUnsafeBytes { try img.write(at: 602_000, from: $0) }
            try img.applySnapshot("base")
            try img.deleteSnapshot("two")
        }
    }
}

import Foundation
import Qcow2
import Testing

/// Damage done to a 1 MiB image (4 KiB clusters, the first 64 KiB written): header at 0, refcount table at
/// cluster 1, refcount block at 2, L1 at 3, L2 at 4, data at 5...20.
enum Damage: String, CaseIterable, Sendable {
    case none, leaks, refcountTooLow, refcountBoth, l1PastEnd, refcountTablePastEnd, emptyRefcountTable, truncated,
         snapshotTablePastEnd

    func apply(_ b: inout [UInt8]) {
        let rb = Int(b.get64(Int(b.get64(48))))
        switch self {
        case .none: break
        case .leaks:
            let end = b.count / 4096
            b += [UInt8](repeating: 0, count: 8192)
            b[rb + 2 * end + 1] = 1
            b[rb + 2 * (end + 1) + 1] = 1
        case .refcountTooLow: b[rb + 2 * 6 + 1] = 0
        case .refcountBoth:
            b[rb + 2 * 6 + 1] = 0
            b[rb + 2 * 7 + 1] = 2
        case .l1PastEnd: b.set64(0x10_0000, at: 40)
        case .refcountTablePastEnd: b.set64(0x10_0000, at: 48)
        case .emptyRefcountTable: b.replaceSubrange(56..<60, with: [0, 0, 0, 0])
        case .truncated: b.removeLast(20000)
        case .snapshotTablePastEnd:
            b.replaceSubrange(60..<64, with: [0, 0, 0, 1])
            b.set64(0x20_0000, at: 64)
        }
    }
}

@Suite("tern image check reports and repairs as qemu-img check does", .serialized)
struct CheckParityTests {
    func damaged(_ d: TempDir, _ damage: Damage) -> [UInt8] {
        let p = d.file("template.qcow2")
        #expect(qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", p, "1M").status == 0)
        qemuIO(p, ["write 0 64k"])
        var b = readFile(p)
        damage.apply(&b)
        return b
    }

    @Test("the same report, exit status and repair on damaged images", arguments: Damage.allCases)
    func sameAsQemu(damage: Damage) throws {
        let d = TempDir()
        let bytes = damaged(d, damage)
        for repair in [[], ["-r", "leaks"], ["-r", "all"]] {
            // Both tools see the same file name, so that names in their reports match.
            let ternDir = d.file("tern"), qemuDir = d.file("qemu")
            for dir in [ternDir, qemuDir] { try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
            writeFile(ternDir + "/disk.qcow2", bytes)
            writeFile(qemuDir + "/disk.qcow2", bytes)
            let ours = tern("check", repair + [ternDir + "/disk.qcow2"])
            let theirs = qemuImg(["check"] + repair + [qemuDir + "/disk.qcow2"])
            let what = "\(damage) \(repair)"
            #expect(ours.status == theirs.status, "\(what): \(ours.err)")
            let quirk = damage == .snapshotTablePastEnd && repair == ["-r", "all"]
            if !quirk {
                // QEMU's double check after repairing a snapshot table reports a stale table; ours does not.
                #expect(ours.out == theirs.out, "\(what)")
            }
            if theirs.err.contains("Check failed") {
                // A repair that cannot proceed: the same findings, then our own last line.
                #expect(Array(ours.err.split(separator: "\n").dropLast()) == Array(theirs.err.split(separator: "\n").dropLast()), "\(what)")
                #expect(ours.err.hasSuffix("check failed: the refcount structures must be rebuilt; repair with -r all\n"))
            } else if !quirk {
                #expect(ours.err == theirs.err, "\(what)")
            }
            if !repair.isEmpty {
                // What each tool left passes (or fails) QEMU's check alike.
                #expect(qemuImg("check", ternDir + "/disk.qcow2").status == qemuImg("check", qemuDir + "/disk.qcow2").status, "\(what)")
            }
        }
    }

    @Test("raw images: exit 63; a missing backing file or an image that cannot be opened: exit 1")
    func otherOutcomes() throws {
        let d = TempDir()
        let raw = d.file("disk.raw")
        writeFile(raw, [UInt8](repeating: 0, count: 1 << 20))
        let r = tern("check", [raw])
        #expect(r.status == 63 && qemuImg("check", raw).status == 63)
        #expect(r.err == "tern: \(raw): This image format does not support checks\n")

        let orphan = d.file("orphan.qcow2")
        #expect(qemuImg("create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2", orphan, "1M").status == 0)
        let missing = tern("check", [orphan])
        #expect(missing.status == 1 && qemuImg("check", orphan).status == 1)
        #expect(missing.out == "")
        #expect(missing.err.hasPrefix("tern: \(orphan): cannot open backing file \(d.file("gone.qcow2")): No such file or directory"))

        var small = damaged(d, .none)
        small.replaceSubrange(36..<40, with: [0, 0, 0, 0])
        writeFile(d.file("small.qcow2"), small)
        let unopenable = tern("check", [d.file("small.qcow2")])
        #expect(unopenable.status == 1 && qemuImg("check", d.file("small.qcow2")).status == 1)
        #expect(unopenable.err == "tern: \(d.file("small.qcow2")): cannot check the image: L1 table is too small for the virtual size; restore it from a backup\n")
    }

    @Test("a repair clears the corrupt bit; the image can be written again")
    func repairClearsCorruptBit() throws {
        let d = TempDir()
        var b = damaged(d, .refcountTooLow)
        b[79] |= 2
        let p = d.file("c.qcow2")
        writeFile(p, b)
        #expect(throws: DiskError.self) { _ = try openRW(p) }
        #expect(tern("check", ["-r", "all", p]).status == 0)
        #expect(readFile(p)[79] & 2 == 0)
        let img = try openRW(p)
        try [UInt8](repeating: 9, count: 4096).withUnsafeBytes { try img.write(at: 8192, from: $0) }
        try img.flush()
        expectQemuClean(p)
    }
}

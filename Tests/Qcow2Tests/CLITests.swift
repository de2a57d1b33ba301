import Foundation
import Qcow2
import Testing

/// The built `tern` executable, next to the test bundle.
func ternBinary() -> String? {
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
    for name in ["tern", "ternimage"] where FileManager.default.isExecutableFile(atPath: dir + "/" + name) {
        return dir + "/" + name
    }
    Issue.record("the tern executable was not built next to the tests in \(dir); run `swift build` first")
    return nil
}

@discardableResult
func tern(_ args: String...) -> ProcResult {
    guard let t = ternBinary() else { return ProcResult(status: -1, out: "", err: "") }
    return run(t, ["image"] + args)
}

@Suite("tern image command line", .serialized, .timeLimit(.minutes(3)))
struct CLITests {
    @Test("verbs, JSON output and exit codes")
    func verbs() throws {
        let d = TempDir()
        var bytes = [UInt8](repeating: 0, count: 2 << 20)
        for i in 0..<(1 << 20) { bytes[i] = UInt8((i / 512) & 0xff) }
        writeFile(d.file("base.raw"), bytes)
        let img = d.file("a.qcow2")
        #expect(tern("create", "-f", "qcow2", "--cluster-size", "4K", "-b", "base.raw", "-F", "raw", img).status == 0)
        // info --output json is the library's JSON.
        let info = tern("info", "--output", "json", img)
        #expect(info.status == 0)
        #expect(info.out.trimmingCharacters(in: .whitespacesAndNewlines) == (try imageInfo(path: img)).render())
        qemuIO(img, ["write -P 0x9 8k 20k", "write -z 100k 8k"])
        // map --output json matches qemu-img's exactly.
        #expect(tern("map", "--output", "json", img).out == qemuImg("map", "--output=json", img).out)
        // check: clean, then leaks (exit 3), then corruption (exit 2).
        #expect(tern("check", img).status == 0)
        var b = readFile(img)
        let rb = Int(b.get64(Int(b.get64(48))))
        let last = b.count / 4096
        b += [UInt8](repeating: 0, count: 8192)
        b[rb + 2 * last + 1] = 1
        writeFile(img, b)
        #expect(tern("check", img).status == 3)
        #expect(qemuImg("check", img).status == 3)
        let repaired = tern("check", "--repair", "all", "--output", "json", img)
        #expect(repaired.status == 0 && repaired.out.contains("\"leaks-fixed\": 1"))
        expectQemuClean(img)
        // snapshots
        #expect(tern("snapshot", "-c", "one", img).status == 0)
        let list = tern("snapshot", "-l", "--output", "json", img)
        #expect(list.out.contains("\"name\": \"one\""))
        #expect(tern("snapshot", "-d", "one", img).status == 0)
        expectQemuClean(img)
        // convert -c, then back to raw
        #expect(tern("convert", "-c", "-O", "qcow2", "--cluster-size", "4K", img, d.file("c.qcow2")).status == 0)
        expectQemuClean(d.file("c.qcow2"))
        #expect(qemuImg("compare", img, d.file("c.qcow2")).status == 0)
        #expect(tern("convert", "-O", "raw", d.file("c.qcow2"), d.file("c.raw")).status == 0)
        #expect(qemuImg("compare", img, d.file("c.raw")).status == 0)
        // resize, commit, rebase
        #expect(tern("resize", img, "+1M").status == 0)
        #expect(tern("commit", img).status == 0)
        expectQemuClean(img)
        #expect(tern("rebase", "-u", "-b", "", img).status == 0)
        #expect(!qemuImg("info", img).out.contains("backing file"))
        // bench
        let bench = tern("bench", "-c", "2000", "-d", "4", "--output", "json", img)
        #expect(bench.status == 0 && bench.out.contains("ops-per-second"))
    }

    @Test("errors on bad images are one line naming the image, exit status 1")
    func errors() throws {
        let d = TempDir()
        let p = d.file("bad.qcow2")
        var h = [UInt8](repeating: 0, count: 512)
        h.replaceSubrange(0..<8, with: [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3])
        h[23] = 40  // cluster_bits 40
        writeFile(p, h)
        for verb in [["info", p], ["check", p], ["convert", "-O", "raw", p, d.file("x.raw")], ["map", p]] {
            guard let t = ternBinary() else { return }
            let r = run(t, ["image"] + verb)
            #expect(r.status == 1, "\(verb)")
            let lines = r.err.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].hasPrefix("tern: \(p): ") && lines[0].contains("cluster_bits") && lines[0].contains("; "),
                    "\(verb): \(r.err)")
        }
        #expect(!FileManager.default.fileExists(atPath: d.file("x.raw")), "no half-written output")
    }
}

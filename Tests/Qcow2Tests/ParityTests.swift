import Foundation
import Qcow2
import Testing

/// Runs `tern image ARGS` and `qemu-img ARGS` in `dir` and expects the same status and byte-identical standard output.
func expectSameAsQemu(_ args: [String], in dir: String, sourceLocation: SourceLocation = #_sourceLocation) {
    guard let t = ternBinary(), let q = qemuImgPath() else { return }
    let ours = runIn(dir, t, ["image"] + args)
    let theirs = runIn(dir, q, args)
    #expect(ours.status == theirs.status, "\(args): status \(ours.status) vs \(theirs.status): \(ours.err)", sourceLocation: sourceLocation)
    #expect(ours.out == theirs.out, "\(args):\n--- tern\n\(ours.out)--- qemu-img\n\(theirs.out)", sourceLocation: sourceLocation)
}

/// `tern image ARGS`.
func ternImage(_ args: [String]) -> ProcResult {
    guard let t = ternBinary() else { return ProcResult(status: -1, out: "", err: "") }
    return run(t, ["image"] + args)
}

/// `qemu-img ARGS`.
func qemuImgRun(_ args: [String]) -> ProcResult {
    guard let q = qemuImgPath() else { return ProcResult(status: -1, out: "", err: "") }
    return run(q, args)
}

/// Runs a program with `dir` as its working directory.
func runIn(_ dir: String, _ exe: String, _ args: [String]) -> ProcResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    p.currentDirectoryURL = URL(fileURLWithPath: dir)
    let o = Pipe(), e = Pipe()
    p.standardOutput = o
    p.standardError = e
    do { try p.run() } catch { return ProcResult(status: -1, out: "", err: "\(error)") }
    let od = o.fileHandleForReading.readDataToEndOfFile(), ed = e.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return ProcResult(status: p.terminationStatus, out: String(decoding: od, as: UTF8.self), err: String(decoding: ed, as: UTF8.self))
}

@Suite("tern image output is byte-identical to qemu-img's", .serialized)
struct ParityTests {
    /// A raw base with a hole, a qcow2 overlay with qemu and Tern snapshots, a v2 image and a zstd image.
    func images() throws -> TempDir {
        let d = TempDir()
        #expect(qemuImg("create", "-f", "raw", d.file("base.raw"), "3M").status == 0)
        qemuIO(d.file("base.raw"), ["write -P 1 1M 64k"], format: "raw")
        #expect(qemuImg("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", d.file("top.qcow2")).status == 0)
        qemuIO(d.file("top.qcow2"), ["write -P 2 64k 128k", "write -z 2M 64k"])
        #expect(qemuImg("snapshot", "-c", "made by qemu", d.file("top.qcow2")).status == 0)
        try openRW(d.file("top.qcow2")).createSnapshot(name: "made-by-tern")
        #expect(qemuImg("create", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4k", d.file("v2.qcow2"), "1G").status == 0)
        #expect(qemuImg("snapshot", "-c", "s", d.file("v2.qcow2")).status == 0)
        #expect(qemuImg("create", "-f", "qcow2", "-o", "compression_type=zstd,extended_l2=on,lazy_refcounts=on,refcount_bits=8",
                        d.file("z.qcow2"), "1500M").status == 0)
        return d
    }

    @Test("info, info --output json and info --backing-chain")
    func info() throws {
        let d = try images()
        for name in ["top.qcow2", "base.raw", "v2.qcow2", "z.qcow2", d.file("top.qcow2")] {
            expectSameAsQemu(["info", name], in: d.path)
            expectSameAsQemu(["info", "--output", "json", name], in: d.path)
        }
        expectSameAsQemu(["info", "--backing-chain", "top.qcow2"], in: d.path)
        expectSameAsQemu(["info", "--backing-chain", "--output", "json", "top.qcow2"], in: d.path)
    }

    @Test("snapshot -l: dates, sizes and icount columns")
    func snapshotList() throws {
        let d = try images()
        expectSameAsQemu(["snapshot", "-l", "top.qcow2"], in: d.path)
        expectSameAsQemu(["snapshot", "-l", "v2.qcow2"], in: d.path)
        expectSameAsQemu(["snapshot", "-l", "z.qcow2"], in: d.path)
    }

    @Test("map of a sparse raw file and of a chain, human and json")
    func map() throws {
        let d = try images()
        writeFile(d.file("holes.raw"), [])
        #expect(truncate(d.file("holes.raw"), 4 << 20) == 0)
        for name in ["base.raw", "top.qcow2", "holes.raw"] {
            expectSameAsQemu(["map", name], in: d.path)
            expectSameAsQemu(["map", "--output", "json", name], in: d.path)
        }
        #expect(tern("map", "--output", "json", d.file("holes.raw")).out.contains("\"zero\": true, \"data\": false, \"offset\": 0}"))
    }

    @Test("create: raw by default, -o options, the Formatting line and the image qemu-img makes")
    func create() throws {
        let d = TempDir()
        writeFile(d.file("b.raw"), [UInt8](repeating: 7, count: 1 << 20))
        let cases: [[String]] = [
            ["disk.raw", "1M"],
            ["-f", "raw", "-o", "preallocation=full", "full.raw", "1M"],
            ["-f", "qcow2", "plain.qcow2", "10G"],
            ["-f", "qcow2", "-o", "compat=0.10,cluster_size=4k,preallocation=metadata", "v2.qcow2", "1M"],
            ["-f", "qcow2", "-b", "b.raw", "-F", "raw", "-o", "lazy_refcounts=on,refcount_bits=8,extended_l2=on,compression_type=zstd", "x.qcow2"],
            ["-f", "qcow2", "-o", "size=3M", "-o", "cluster_size=1k", "s.qcow2"],
        ]
        for args in cases {
            guard let t = ternBinary(), let q = qemuImgPath() else { return }
            let ours = runIn(d.path, t, ["image", "create"] + args)
            #expect(ours.status == 0, "\(args): \(ours.err)")
            let file = args[args.count - (args.last!.hasSuffix("M") || args.last!.hasSuffix("G") ? 2 : 1)]
            let made = runIn(d.path, q, ["info", "--output=json", file]).out
            let theirs = runIn(d.path, q, ["create"] + args.map { $0 == file ? "q-" + file : $0 })
            #expect(ours.out == theirs.out.replacingOccurrences(of: "q-" + file, with: file), "\(args)")
            let reference = runIn(d.path, q, ["info", "--output=json", "q-" + file]).out
            func stable(_ s: String) -> String {
                s.split(separator: "\n").filter { !$0.contains("actual-size") && !$0.contains("\"filename\"") }.joined(separator: "\n")
            }
            #expect(stable(made) == stable(reference), "\(args)")
            if file.hasSuffix(".qcow2") { expectQemuClean(d.file(file)) }
        }
        #expect(qemuImg("info", d.file("disk.raw")).out.contains("file format: raw"))
        let help = tern("create", "-f", "qcow2", "-o", "help")
        #expect(help.status == 0)
        for option in ["size", "compat", "backing_file", "backing_fmt", "cluster_size", "preallocation", "lazy_refcounts",
                       "refcount_bits", "extended_l2", "compression_type"] {
            #expect(help.out.contains("  \(option)=<"), "\(option)")
        }
        let bad = tern("create", "-f", "qcow2", "-o", "foo=bar", d.file("bad.qcow2"), "1M")
        #expect(bad.status == 1 && bad.err.contains("foo") && bad.err.split(separator: "\n").count == 1)
        #expect(!FileManager.default.fileExists(atPath: d.file("bad.qcow2")))
    }

    @Test("convert: raw by default, -S 0, -n, -B, -t none, -o; -p prints qemu-img's progress line")
    func convertOptions() throws {
        let d = TempDir()
        var bytes = [UInt8](repeating: 0, count: 4 << 20)
        for i in 0..<(1 << 20) { bytes[i] = UInt8(truncatingIfNeeded: i / 7) }
        writeFile(d.file("src.raw"), bytes)
        // A file named .raw, no -O: raw.
        #expect(tern("convert", d.file("src.raw"), d.file("out.raw")).status == 0)
        #expect(qemuImg("info", d.file("out.raw")).out.contains("file format: raw"))
        #expect(readFile(d.file("out.raw")) == bytes)
        // -S 0 allocates the zeros too; the default leaves them sparse.
        #expect(tern("convert", "-S", "0", "-t", "none", d.file("src.raw"), d.file("full.raw")).status == 0)
        #expect(readFile(d.file("full.raw")) == bytes)
        #expect(tern("info", "--output", "json", d.file("full.raw")).out.contains("\"actual-size\": \(4 << 20)"))
        #expect(!tern("info", "--output", "json", d.file("out.raw")).out.contains("\"actual-size\": \(4 << 20)"))
        // -o on the output.
        #expect(tern("convert", "-O", "qcow2", "-o", "cluster_size=4k,compat=0.10", d.file("src.raw"), d.file("o.qcow2")).status == 0)
        let info = qemuImg("info", d.file("o.qcow2")).out
        #expect(info.contains("cluster_size: 4096") && info.contains("compat: 0.10"))
        expectQemuSame(d.file("o.qcow2"), d.file("src.raw"))
        // -n writes into an existing image, zeros included.
        #expect(qemuImg("create", "-f", "qcow2", d.file("n.qcow2"), "4M").status == 0)
        qemuIO(d.file("n.qcow2"), ["write -P 0x55 2M 1M"])
        #expect(tern("convert", "-n", "-O", "qcow2", d.file("src.raw"), d.file("n.qcow2")).status == 0)
        expectQemuSame(d.file("n.qcow2"), d.file("src.raw"))
        expectQemuClean(d.file("n.qcow2"))
        // -B: only the top image's clusters are copied; the new backing file supplies the rest.
        #expect(qemuImg("create", "-f", "qcow2", "-b", "src.raw", "-F", "raw", d.file("top.qcow2")).status == 0)
        qemuIO(d.file("top.qcow2"), ["write -P 0x66 3M 64k"])
        #expect(tern("convert", "-O", "qcow2", "-B", "src.raw", d.file("top.qcow2"), d.file("b.qcow2")).status == 0)
        #expect(qemuImg("compare", d.file("top.qcow2"), d.file("b.qcow2")).status == 0)
        let map = qemuImg("map", "--output=json", d.file("b.qcow2")).out
        #expect(map.contains("\"start\": 3145728, \"length\": 65536, \"depth\": 0"))
        #expect(!map.contains("\"start\": 0, \"length\": 1048576, \"depth\": 0"), "the base's data stays in the base")
        // -W and -m are accepted; -m is range checked as qemu-img does.
        #expect(tern("convert", "-W", "-m", "16", d.file("src.raw"), d.file("w.raw")).status == 0)
        #expect(tern("convert", "-m", "17", d.file("src.raw"), d.file("w.raw")).status == 2)
        // -p: the progress line of qemu-img, ending at 100% and a newline.
        let progress = tern("convert", "-p", "-O", "qcow2", d.file("src.raw"), d.file("p.qcow2"))
        #expect(progress.status == 0)
        #expect(progress.out.hasPrefix("    (0.00/100%)\r"))
        #expect(progress.out.hasSuffix("    (100.00/100%)\r    (100.00/100%)\r\n"))
        let steps = progress.out.split(separator: "\r").dropLast()
        #expect(steps.allSatisfy { $0.range(of: #"^    \(\d{1,3}\.\d\d/100%\)$"#, options: .regularExpression) != nil }, "\(steps)")
        let quiet = tern("convert", "-O", "qcow2", d.file("src.raw"), d.file("q.qcow2"))
        #expect(quiet.out.isEmpty, "no progress when standard output is not a terminal")
    }

    @Test("commit -b into a deeper base, -p; rebase -p")
    func commitAndRebase() throws {
        let d = TempDir()
        #expect(qemuImg("create", "-f", "qcow2", d.file("base.qcow2"), "2M").status == 0)
        qemuIO(d.file("base.qcow2"), ["write -P 1 0 2M"])
        #expect(qemuImg("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", d.file("mid.qcow2")).status == 0)
        qemuIO(d.file("mid.qcow2"), ["write -P 2 0 64k"])
        #expect(qemuImg("create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", d.file("top.qcow2")).status == 0)
        qemuIO(d.file("top.qcow2"), ["write -P 3 1M 64k", "write -z 1536k 64k"])
        #expect(qemuImg("convert", "-O", "raw", d.file("top.qcow2"), d.file("expect.raw")).status == 0)
        let r = tern("commit", "-p", "-b", d.file("base.qcow2"), d.file("top.qcow2"))
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.hasSuffix("    (100.00/100%)\r\nImage committed.\n"))
        expectQemuSame(d.file("base.qcow2"), d.file("expect.raw"))
        expectQemuSame(d.file("top.qcow2"), d.file("expect.raw"))
        expectQemuClean(d.file("base.qcow2"))
        #expect(tern("commit", "-b", d.file("expect.raw"), d.file("top.qcow2")).status == 1)
        let rebased = tern("rebase", "-p", "-b", "base.qcow2", "-F", "qcow2", d.file("top.qcow2"))
        #expect(rebased.status == 0 && rebased.out.hasSuffix("    (100.00/100%)\r\n"))
        expectQemuSame(d.file("top.qcow2"), d.file("expect.raw"))
    }

    @Test("measure: the numbers qemu-img gives, human and json")
    func measureSizes() throws {
        let d = try images()
        qemuIO(d.file("top.qcow2"), ["write -P 9 1536k 100k"])
        #expect(qemuImg("bitmap", "--add", "-g", "512k", d.file("z.qcow2"), "b1").status == 0)
        let cases: [[String]] = [
            ["-O", "qcow2", "top.qcow2"], ["-O", "qcow2", "base.raw"], ["top.qcow2"], ["-O", "qcow2", "--size", "10G"],
            ["-O", "qcow2", "-o", "cluster_size=4k,preallocation=metadata", "top.qcow2"],
            ["-O", "qcow2", "-o", "extended_l2=on", "--size", "1G"], ["-O", "qcow2", "-o", "refcount_bits=1", "--size", "1T"],
            ["-O", "qcow2", "-o", "preallocation=full", "--size", "1G"], ["-O", "qcow2", "-o", "compat=0.10", "--size", "1G"],
            ["-O", "qcow2", "-o", "backing_file=base.raw", "top.qcow2"], ["-O", "qcow2", "z.qcow2"], ["-O", "raw", "--size", "1000"],
        ]
        for args in cases {
            expectSameAsQemu(["measure"] + args, in: d.path)
            expectSameAsQemu(["measure", "--output", "json"] + args, in: d.path)
        }
    }

    @Test("compare: messages, offsets and exit statuses")
    func compare() throws {
        let d = try images()
        writeFile(d.file("a.raw"), [UInt8](repeating: 0, count: 1 << 20))
        var b = [UInt8](repeating: 0, count: 1 << 20)
        b[1000] = 1
        writeFile(d.file("b.raw"), b)
        var c = [UInt8](repeating: 0, count: 2 << 20)
        c[1_500_000] = 1
        writeFile(d.file("c.raw"), c)
        writeFile(d.file("zeros.raw"), [UInt8](repeating: 0, count: 2 << 20))
        #expect(qemuImg("convert", "-O", "qcow2", d.file("top.qcow2"), d.file("copy.qcow2")).status == 0)
        for args in [["a.raw", "b.raw"], ["a.raw", "a.raw"], ["a.raw", "c.raw"], ["c.raw", "a.raw"], ["a.raw", "zeros.raw"],
                     ["-s", "a.raw", "c.raw"], ["-q", "a.raw", "b.raw"], ["top.qcow2", "copy.qcow2"], ["-s", "top.qcow2", "top.qcow2"],
                     ["-p", "a.raw", "a.raw"], ["-p", "a.raw", "b.raw"], ["-f", "qcow2", "-F", "raw", "z.qcow2", "a.raw"]] {
            expectSameAsQemu(["compare"] + args, in: d.path)
        }
        #expect(tern("compare", d.file("a.raw"), d.file("missing")).status == 2)
    }

    @Test("dd: bs, count and skip as qemu-img dd")
    func ddCopies() throws {
        let d = TempDir()
        writeFile(d.file("src.raw"), (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 / 4093) })
        for (name, args) in [("a", ["bs=1M", "count=3", "skip=1"]), ("b", ["bs=64k", "skip=2"]), ("c", ["count=100"]),
                             ("d", ["bs=1M", "skip=100"])] {
            #expect(ternImage(["dd", "if=" + d.file("src.raw"), "of=" + d.file("t-\(name)")] + args).status == 0)
            #expect(qemuImgRun(["dd", "if=" + d.file("src.raw"), "of=" + d.file("q-\(name)")] + args).status == 0)
            #expect(readFile(d.file("t-\(name)")) == readFile(d.file("q-\(name)")), "\(args)")
        }
        #expect(tern("dd", "-O", "qcow2", "bs=64k", "skip=3", "if=" + d.file("src.raw"), "of=" + d.file("t.qcow2")).status == 0)
        #expect(qemuImg("dd", "-O", "qcow2", "bs=64k", "skip=3", "if=" + d.file("src.raw"), "of=" + d.file("q.qcow2")).status == 0)
        #expect(qemuImg("compare", d.file("t.qcow2"), d.file("q.qcow2")).status == 0)
        expectQemuClean(d.file("t.qcow2"))
        #expect(tern("dd", "bs=0", "if=" + d.file("src.raw"), "of=" + d.file("x")).status == 2)
    }

    @Test("amend: compat upgrade with snapshots, lazy refcounts, size; creation-only options refused")
    func amendOptions() throws {
        let d = TempDir()
        #expect(qemuImg("create", "-f", "qcow2", "-o", "compat=0.10", d.file("a.qcow2"), "1M").status == 0)
        qemuIO(d.file("a.qcow2"), ["write -P 3 0 64k"])
        try openRW(d.file("a.qcow2")).createSnapshot(name: "before")
        #expect(qemuImg("convert", "-O", "raw", d.file("a.qcow2"), d.file("a.raw")).status == 0)
        let amended = tern("amend", "-p", "-o", "compat=1.1,lazy_refcounts=on", d.file("a.qcow2"))
        #expect(amended.status == 0, "\(amended.err)")
        #expect(amended.out == "    (0.00/100%)\r    (100.00/100%)\r\n")
        let info = qemuImg("info", d.file("a.qcow2")).out
        #expect(info.contains("compat: 1.1") && info.contains("lazy refcounts: true") && info.contains("before"))
        expectQemuClean(d.file("a.qcow2"))
        expectQemuSame(d.file("a.qcow2"), d.file("a.raw"))
        #expect(qemuImg("snapshot", "-a", "before", d.file("a.qcow2")).status == 0)
        #expect(tern("amend", "-o", "size=4M,lazy_refcounts=off", d.file("a.qcow2")).status == 0)
        #expect(qemuImg("info", d.file("a.qcow2")).out.contains("virtual size: 4 MiB"))
        for option in ["cluster_size=4k", "extended_l2=on", "compression_type=zstd", "preallocation=full", "backing_file=a.raw",
                       "refcount_bits=8", "compat=0.10", "size=1M"] {
            let r = tern("amend", "-o", option, d.file("a.qcow2"))
            #expect(r.status == 1 && r.err.split(separator: "\n").count == 1, "\(option): \(r.err)")
        }
        expectQemuClean(d.file("a.qcow2"))
    }
}

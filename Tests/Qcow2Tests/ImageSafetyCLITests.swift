import Foundation
import Qcow2
import Testing

@Suite("tern image refuses images in use, outputs over their source and inputs that are not files", .serialized)
struct ImageSafetyCLITests {
    func image(_ d: TempDir, _ name: String, backing: String? = nil) throws -> String {
        var o = Qcow2CreateOptions(size: 4 << 20)
        o.backingFile = backing
        o.backingFormat = backing == nil ? nil : .qcow2
        try Qcow2Image.create(path: d.file(name), options: o)
        return d.file(name)
    }

    @Test("verbs that write refuse an image another process writes, with one line", arguments: [
        ["snapshot", "-c", "s"], ["snapshot", "-a", "s"], ["snapshot", "-d", "s"], ["resize", "IMG", "+1M"], ["commit"],
        ["rebase", "-u", "-b", ""], ["check", "-r", "all"],
    ])
    func writersRefused(verb: [String]) throws {
        let d = TempDir()
        _ = try image(d, "base.qcow2")
        let p = try image(d, "a.qcow2", backing: "base.qcow2")
        let qcow = try Qcow2Image(path: p, options: Qcow2OpenOptions(writable: true))
        try qcow.createSnapshot(name: "s")
        let before = readFile(p)
        let args = verb.contains("IMG") ? verb.map { $0 == "IMG" ? p : $0 } : verb + [p]
        let r = tern(args[0], Array(args.dropFirst()))
        #expect(r.status == 1)
        #expect(r.err == "tern: \(p): image is in use by another process (write lock held); stop the program using it first\n")
        #expect(readFile(p) == before)
        withExtendedLifetime(qcow) {}
    }

    @Test("commit refuses a base another process uses")
    func commitBaseInUse() throws {
        let d = TempDir()
        let base = try image(d, "base.qcow2")
        let p = try image(d, "a.qcow2", backing: "base.qcow2")
        do {
            let reader = try openImage(path: base)
            let r = tern("commit", [p])
            #expect(r.status == 1)
            #expect(r.err.contains("image is in use by another process (read lock held)"))
            withExtendedLifetime(reader) {}
        }
        #expect(tern("commit", [p]).status == 0)
    }

    @Test("readers need -U for an image being written: info, map, check")
    func readersNeedForceShare() throws {
        let d = TempDir()
        let p = try image(d, "a.qcow2")
        let writer = try openImage(path: p, writable: true)
        for verb in ["info", "map", "check"] {
            let r = tern(verb, [p])
            #expect(r.status == 1, "\(verb)")
            #expect(r.err == "tern: \(p): image is in use by another process (write lock held); use -U to read it anyway\n", "\(verb)")
            #expect(tern(verb, ["-U", p]).status == 0, "\(verb) -U")
            #expect(tern(verb, ["--force-share", p]).status == 0, "\(verb) --force-share")
        }
        withExtendedLifetime(writer) {}
    }

    @Test("convert refuses to write over its own source, also through a symlink or a hard link")
    func convertOntoItself() throws {
        let d = TempDir()
        let p = try image(d, "a.qcow2")
        #expect(tern("snapshot", ["-c", "keep", p]).status == 0)
        #expect(symlink(p, d.file("sym.qcow2")) == 0)
        #expect(link(p, d.file("hard.qcow2")) == 0)
        let before = readFile(p)
        for output in [p, d.file("sym.qcow2"), d.file("hard.qcow2")] {
            let r = tern("convert", ["-O", "qcow2", p, output])
            #expect(r.status == 1)
            #expect(r.err == "tern: \(p): the output \(output) is an image being read (the same file); choose another output path\n")
        }
        // Also when the output is the source's backing file.
        let top = try image(d, "top.qcow2", backing: "a.qcow2")
        #expect(tern("convert", ["-O", "qcow2", top, p]).status == 1)
        #expect(readFile(p) == before)
    }

    @Test("a FIFO, a socket, a directory or a character device is refused with one line, never waited on",
          .timeLimit(.minutes(1)))
    func notFiles() throws {
        let d = TempDir()
        let fifo = d.file("pipe.qcow2"), socketPath = d.file("sock.qcow2"), directory = d.file("dir.qcow2")
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(mkdir(directory, 0o700) == 0)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(socketPath.utf8)) }
        #expect(withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0)
        for input in [fifo, socketPath, directory, "/dev/null"] {
            for verb in [["info"], ["check"], ["map"], ["convert", "-O", "raw"], ["snapshot", "-l"], ["resize"]] {
                var args = Array(verb.dropFirst()) + [input]
                if verb[0] == "convert" { args.append(d.file("out.raw")) }
                if verb[0] == "resize" { args.append("+1M") }
                let r = tern(verb[0], args)
                #expect(r.status == 1, "\(verb) \(input)")
                #expect(r.err == "tern: \(input): not a regular file or block device\n", "\(verb) \(input)")
            }
        }
        #expect(throws: DiskError.refused("not a regular file or block device")) { _ = try openImage(path: fifo, writable: true) }
    }
}

@discardableResult
func tern(_ verb: String, _ args: [String]) -> ProcResult {
    guard let t = ternBinary() else { return ProcResult(status: -1, out: "", err: "") }
    return run(t, ["image", verb] + args)
}

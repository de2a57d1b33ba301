import Foundation
import Qcow2
import Testing

/// The lock error of `body`, or nil if it did not throw one.
func lockError(_ body: () throws -> Void) -> (message: String, readOnly: Bool)? {
    do {
        try body()
        return nil
    } catch DiskError.inUse(let message, let readOnly) {
        return (message, readOnly)
    } catch {
        Issue.record("expected an image-in-use error, got \(error)")
        return nil
    }
}

/// A QEMU process holding `file` open until stopped.
final class QemuHolder {
    let process = Process()

    /// Starts `qemu-io` on `file` (read-only with `readOnly`) and waits until its locks are visible to Tern.
    init?(_ file: String, format: String = "qcow2", readOnly: Bool = false) {
        guard let io = qemuIOPath() else { return nil }
        process.executableURL = URL(fileURLWithPath: io)
        process.arguments = (readOnly ? ["-r"] : []) + ["-f", format, "-c", "sleep 20000", file]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch {
            Issue.record("cannot start qemu-io: \(error)")
            return nil
        }
        // Its locks are in place once a Tern writer is refused; give up (and fail) after 10 s.
        for _ in 0..<200 {
            if (try? openImage(path: file, format: ImageFormat(rawValue: format), writable: true)) == nil { return }
            usleep(50_000)
        }
        Issue.record("qemu-io never locked \(file)")
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

@Suite("image locks compatible with QEMU's", .serialized)
struct LockTests {
    func image(_ d: TempDir, _ name: String = "a.qcow2", backing: String? = nil) throws -> String {
        var o = Qcow2CreateOptions(size: 4 << 20)
        o.backingFile = backing
        o.backingFormat = backing == nil ? nil : .qcow2
        try Qcow2Image.create(path: d.file(name), options: o)
        return d.file(name)
    }

    @Test("a second writable open of an image is refused, in the same process too")
    func twoWriters() throws {
        let d = TempDir()
        let p = try image(d)
        let first = try openImage(path: p, writable: true)
        let refused = lockError { _ = try openImage(path: p, writable: true) }
        #expect(refused?.message == "image is in use by this process (write lock held)")
        #expect(refused?.readOnly == false)
        // Readers are refused while it is written, and a writer while it is read.
        #expect(lockError { _ = try openImage(path: p) }?.readOnly == true)
        withExtendedLifetime(first) {}
    }

    @Test("the same image given twice is refused, also through a symlink and a hard link")
    func sameImageTwice() throws {
        let d = TempDir()
        let p = try image(d)
        #expect(symlink(p, d.file("link.qcow2")) == 0)
        #expect(link(p, d.file("hard.qcow2")) == 0)
        let first = try openImage(path: p, writable: true)
        for other in [p, d.file("link.qcow2"), d.file("hard.qcow2")] {
            #expect(lockError { _ = try openImage(path: other, writable: true) } != nil, "\(other)")
        }
        withExtendedLifetime(first) {}
    }

    @Test("readers share an image; a writer waits for them to close it")
    func readersShare() throws {
        let d = TempDir()
        let p = try image(d)
        do {
            let a = try openImage(path: p), b = try openImage(path: p)
            #expect(lockError { _ = try openImage(path: p, writable: true) }?.message == "image is in use by this process (read lock held)")
            withExtendedLifetime((a, b)) {}
        }
        _ = try openImage(path: p, writable: true)
    }

    @Test("-U reads an image being written without a lock; it cannot write")
    func forceShare() throws {
        let d = TempDir()
        let p = try image(d)
        let writer = try openImage(path: p, writable: true)
        let reader = try openImage(path: p, forceShare: true)
        #expect(reader.virtualSize == writer.virtualSize)
        #expect(throws: DiskError.invalidArgument("force-share (-U) works only for read-only opens")) {
            _ = try openImage(path: p, writable: true, forceShare: true)
        }
    }

    @Test("a writer locks every backing file for shared reading")
    func backingChain() throws {
        let d = TempDir()
        _ = try image(d, "base.qcow2")
        _ = try image(d, "mid.qcow2", backing: "base.qcow2")
        let top = try image(d, "top.qcow2", backing: "mid.qcow2")
        let writer = try openImage(path: top, writable: true)
        for backing in ["base.qcow2", "mid.qcow2"] {
            let refused = lockError { _ = try openImage(path: d.file(backing), writable: true) }
            #expect(refused?.message == "image is in use by this process (read lock held)", "\(backing)")
            // Other readers are welcome.
            _ = try openImage(path: d.file(backing))
        }
        // QEMU sees the same: it may read a backing file but not write it.
        #expect(qemuImg("info", d.file("base.qcow2")).status == 0)
        let write = run(qemuIOPath() ?? "", ["-c", "write 0 4k", d.file("base.qcow2")])
        #expect(write.err.contains("Failed to get \"write\" lock"), "\(write.err)")
        withExtendedLifetime(writer) {}
    }

    @Test("QEMU sees Tern's write lock: qemu-img info needs -U, qemu-io cannot write")
    func qemuSeesTern() throws {
        let d = TempDir()
        let p = try image(d)
        let writer = try openImage(path: p, writable: true)
        let info = qemuImg("info", p)
        #expect(info.status == 1)
        #expect(info.err.contains("Failed to get shared \"write\" lock"), "\(info.err)")
        #expect(qemuImg("info", "-U", p).status == 0)
        let write = run(qemuIOPath() ?? "", ["-c", "write 0 4k", p])
        #expect(write.err.contains("Failed to get \"write\" lock"), "\(write.err)")
        #expect(qemuImg("check", p).status == 1)
        withExtendedLifetime(writer) {}
    }

    @Test("Tern sees QEMU's locks: a writing qemu-io refuses Tern's writers and readers, not -U")
    func ternSeesQemu() throws {
        let d = TempDir()
        let p = try image(d)
        guard let holder = QemuHolder(p) else { return }
        #expect(lockError { _ = try openImage(path: p, writable: true) }?.message == "image is in use by another process (write lock held)")
        #expect(lockError { _ = try openImage(path: p) }?.message == "image is in use by another process (write lock held)")
        #expect(try openImage(path: p, forceShare: true).virtualSize == 4 << 20)
        withExtendedLifetime(holder) {}
    }

    @Test("a reading qemu-io lets Tern read but not write; raw images are locked too")
    func qemuReader() throws {
        let d = TempDir()
        let p = try image(d)
        let raw = d.file("r.raw")
        writeFile(raw, [UInt8](repeating: 0, count: 1 << 20))
        guard let holder = QemuHolder(p, readOnly: true) else { return }
        _ = try openImage(path: p)
        #expect(lockError { _ = try openImage(path: p, writable: true) }?.message == "image is in use by another process (read lock held)")
        withExtendedLifetime(holder) {}
        guard let rawHolder = QemuHolder(raw, format: "raw") else { return }
        #expect(lockError { _ = try openImage(path: raw, format: .raw, writable: true) } != nil)
        withExtendedLifetime(rawHolder) {}
    }

    @Test("an output is never written over an image in use or over the image being read")
    func outputs() throws {
        let d = TempDir()
        let p = try image(d)
        let reader = try openImage(path: p)
        #expect(symlink(p, d.file("link.qcow2")) == 0)
        for target in [p, d.file("link.qcow2")] {
            #expect(throws: DiskError.refused("the output \(target) is an image being read (the same file); choose another output path")) {
                try convert(reader, to: target, options: ConvertOptions())
            }
        }
        let before = readFile(p)
        // Another process's image: refused through its lock.
        let other = try image(d, "b.qcow2")
        guard let holder = QemuHolder(other) else { return }
        #expect(lockError { try convert(reader, to: other, options: ConvertOptions()) } != nil)
        #expect(readFile(p) == before)
        withExtendedLifetime(holder) {}
    }
}

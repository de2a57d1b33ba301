import Foundation
import Glibc
import Qcow2
import Testing

@Suite("outputs are written to, not replaced", .serialized)
struct OutputTests {
    func source(_ d: TempDir) -> String {
        writeFile(d.file("src.raw"), (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 / 3) })
        return d.file("src.raw")
    }

    func inode(_ path: String) -> (ino: UInt64, mode: UInt32, uid: UInt32, links: UInt64, type: UInt32) {
        var st = stat()
        #expect(lstat(path, &st) == 0)
        return (UInt64(st.st_ino), UInt32(st.st_mode & 0o7777), st.st_uid, UInt64(st.st_nlink), UInt32(st.st_mode & S_IFMT))
    }

    @Test("an existing file keeps its owner and mode; a hard link stays linked")
    func ownerModeAndLinks() throws {
        let d = TempDir()
        let src = source(d)
        writeFile(d.file("old.raw"), [1, 2, 3])
        #expect(chmod(d.file("old.raw"), 0o640) == 0)
        #expect(chown(d.file("old.raw"), 65534, 65534) == 0 || getuid() != 0)
        let before = inode(d.file("old.raw"))
        #expect(tern("convert", src, d.file("old.raw")).status == 0)
        let after = inode(d.file("old.raw"))
        #expect(after.mode == 0o640 && after.uid == before.uid)
        #expect(readFile(d.file("old.raw")) == readFile(src))

        writeFile(d.file("a"), [9])
        #expect(link(d.file("a"), d.file("b")) == 0)
        #expect(tern("create", "-f", "qcow2", d.file("a"), "1M").status == 0)
        #expect(inode(d.file("a")).ino == inode(d.file("b")).ino && inode(d.file("b")).links == 2)
        #expect(qemuImg("info", d.file("b")).out.contains("file format: qcow2"))
        expectQemuClean(d.file("b"))
    }

    @Test("a symbolic link is followed: its target is written, the link stays")
    func symlink() throws {
        let d = TempDir()
        let src = source(d)
        writeFile(d.file("target.raw"), [1])
        #expect(Glibc.symlink("target.raw", d.file("link.raw")) == 0)
        #expect(tern("convert", src, d.file("link.raw")).status == 0)
        #expect(inode(d.file("link.raw")).type == UInt32(S_IFLNK))
        #expect(readFile(d.file("target.raw")) == readFile(src))
        #expect(Glibc.symlink("made.raw", d.file("dangling")) == 0)
        #expect(tern("create", d.file("dangling"), "64K").status == 0)
        #expect(inode(d.file("dangling")).type == UInt32(S_IFLNK) && readFile(d.file("made.raw")).count == 65536)
    }

    @Test("character devices are never grown or replaced; FIFOs, directories and the source itself are refused with one line")
    func devicesAndSpecialFiles() throws {
        let d = TempDir()
        let src = source(d)
        for args in [["convert", src, "/dev/full"], ["create", "/dev/full", "1M"]] {
            let r = tern(args[0], args[1], args[2])
            #expect(r.status == 1 && r.err.contains("cannot grow device files") && r.err.split(separator: "\n").count == 1, "\(r.err)")
            #expect(inode("/dev/full").type == UInt32(S_IFCHR))
        }
        #expect(mkfifo(d.file("fifo"), 0o600) == 0)
        let fifo = tern("convert", src, d.file("fifo"))
        #expect(fifo.status == 1 && fifo.err.contains("is a FIFO") && fifo.err.split(separator: "\n").count == 1)
        #expect(inode(d.file("fifo")).type == UInt32(S_IFIFO))
        let dir = tern("create", d.path, "1M")
        #expect(dir.status == 1 && dir.err.contains("is a directory"))
        let same = tern("convert", src, src)
        #expect(same.status == 1 && same.err.contains("is an image being read"))
    }

    @Test("initramfs create follows the same rules")
    func initramfs() throws {
        guard let t = ternBinary() else { return }
        let d = TempDir()
        writeFile(d.file("target.cpio"), [1])
        #expect(Glibc.symlink("target.cpio", d.file("link.cpio")) == 0)
        #expect(chmod(d.file("target.cpio"), 0o600) == 0)
        let r = run(t, ["initramfs", "create", "--output", d.file("link.cpio")])
        #expect(r.status == 0, "\(r.err)")
        #expect(inode(d.file("link.cpio")).type == UInt32(S_IFLNK))
        #expect(inode(d.file("target.cpio")).mode == 0o600 && readFile(d.file("target.cpio")).count > 1 << 20)
        let full = run(t, ["initramfs", "create", "--output", "/dev/full"])
        #expect(full.status == 1 && full.err.contains("cannot grow device files"))
        #expect(inode("/dev/full").type == UInt32(S_IFCHR))
    }

    @Test("a block device is written in place, raw or qcow2, and never grown", .enabled(if: getuid() == 0, "loop devices need root"))
    func blockDevice() throws {
        let d = TempDir()
        let src = source(d)
        var bytes = readFile(src)
        bytes.replaceSubrange((256 << 10)..<(512 << 10), with: repeatElement(0, count: 256 << 10))
        writeFile(src, bytes)
        writeFile(d.file("backing"), [UInt8](repeating: 0xee, count: 2 << 20))
        let attach = run("/usr/sbin/losetup", ["-f", "--show", d.file("backing")])
        #expect(attach.status == 0, "\(attach.err)")
        let device = attach.out.trimmingCharacters(in: .whitespacesAndNewlines)
        guard attach.status == 0 else { return }
        defer { run("/usr/sbin/losetup", ["-d", device]) }
        #expect(tern("convert", src, device).status == 0)
        #expect(inode(device).type == UInt32(S_IFBLK))
        let raw = qemuImg("compare", "-f", "raw", "-F", "raw", src, device)
        #expect(raw.out.contains("Warning: Image size mismatch!") && raw.out.contains("Content mismatch at offset 1048576!"),
                "the source's bytes, zeros included, are on the device: \(raw.out)")
        #expect(tern("convert", "-O", "qcow2", "-o", "cluster_size=4k", src, device).status == 0)
        #expect(qemuImg("compare", "-f", "qcow2", "-F", "raw", device, src).status == 0)
        #expect(qemuImg("check", "-f", "qcow2", device).status == 0)
        writeFile(d.file("big.raw"), [])
        #expect(truncate(d.file("big.raw"), 3 << 20) == 0)
        let big = tern("convert", d.file("big.raw"), device)
        #expect(big.status == 1 && big.err.contains("cannot grow device files"))
    }
}


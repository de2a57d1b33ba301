import Glibc
import Initramfs
import Testing

@Suite("cpio newc writer")
struct CPIOArchiveTests {
    /// A small archive with one member of each kind, parents added implicitly.
    func sample() throws -> CPIOArchive {
        var archive = CPIOArchive()
        try archive.add("/etc", .directory(mode: 0o750))
        try archive.add("bin/busybox", .file(mode: 0o755, contents: Array("#!fake busybox\n".utf8)))
        try archive.add("bin/sh", .symlink(target: "busybox"))
        try archive.add("dev/console", .characterDevice(mode: 0o600, major: 5, minor: 1))
        try archive.add("dev/null", .characterDevice(mode: 0o666, major: 1, minor: 3))
        try archive.add("data/empty", .file(mode: 0o644, contents: []))
        try archive.add("data/odd", .file(mode: 0o640, contents: [1, 2, 3, 4, 5]))
        try archive.add("init", .file(mode: 0o755, contents: Array("#!/bin/sh\necho hi\n".utf8)))
        return archive
    }

    func written(_ archive: CPIOArchive, in dir: TempDirectory) throws -> String {
        let path = dir.file("a.cpio")
        try writeBytes(archive.encoded(), to: path)
        return path
    }

    @Test("cpio -t lists every member in order, parents first")
    func listing() throws {
        let dir = TempDirectory()
        let path = try written(sample(), in: dir)
        let result = shell("cpio -t --quiet < '\(path)'")
        #expect(result.status == 0, "\(result.output)")
        #expect(
            result.output.split(separator: "\n") == [
                "etc", "bin", "bin/busybox", "bin/sh", "dev", "dev/console", "dev/null", "data", "data/empty",
                "data/odd", "init",
            ])
    }

    @Test("cpio -i extracts the same contents, modes and symlinks")
    func extraction() throws {
        let dir = TempDirectory()
        let archive = try sample()
        let path = try written(archive, in: dir)
        let root = dir.file("root")
        makeDirectory(root)
        let result = shell("cd '\(root)' && cpio -i --quiet --make-directories --nonmatching 'dev/*' < '\(path)'")
        #expect(result.status == 0, "\(result.output)")
        for member in archive.members {
            let target = "\(root)/\(member.path)"
            switch member.entry {
            case .directory(let mode):
                #expect(fileMode(target) == 0o040000 | mode, "\(member.path)")
            case .file(let mode, let contents):
                #expect(fileMode(target) == 0o100000 | mode, "\(member.path)")
                #expect(try readBytes(target) == contents, "\(member.path)")
            case .symlink(let link):
                #expect(linkTarget(target) == link, "\(member.path)")
            case .characterDevice:
                #expect(fileMode(target) == nil, "device nodes were excluded from extraction")
            }
        }
    }

    @Test("cpio -tv shows device numbers, symlink targets and modes")
    func verboseListing() throws {
        let dir = TempDirectory()
        let path = try written(sample(), in: dir)
        let result = shell("cpio -tv --quiet < '\(path)'")
        #expect(result.status == 0, "\(result.output)")
        let lines = result.output.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        func line(_ name: String) -> [Substring] { lines.first { $0.last == Substring(name) } ?? [] }
        #expect(line("dev/console").first == "crw-------")
        #expect(line("dev/console").contains("5,") && line("dev/console").contains("1"))
        #expect(line("dev/null").first == "crw-rw-rw-")
        #expect(line("dev/null").contains("1,") && line("dev/null").contains("3"))
        #expect(line("etc").first == "drwxr-x---")
        #expect(line("init").first == "-rwxr-xr-x")
        let symlink = lines.first { $0.contains("bin/sh") } ?? []
        #expect(symlink.first == "lrwxrwxrwx" && symlink.suffix(3) == ["bin/sh", "->", "busybox"])
    }

    @Test("header layout: magic, alignment, trailer, size and determinism")
    func layout() throws {
        let archive = try sample()
        let bytes = archive.encoded()
        #expect(bytes.count == archive.encodedSize)
        #expect(bytes.count % 4 == 0)
        #expect(Array(bytes.prefix(6)) == Array("070701".utf8))
        #expect(String(decoding: bytes.suffix(16), as: UTF8.self).contains("TRAILER!!!"))
        #expect(try sample().encoded() == bytes)
        // The first member: inode 1, mode 040750, mtime 0, name "etc" (namesize 4) padded to 116 bytes.
        let header = String(decoding: bytes[0..<110], as: UTF8.self)
        let prefix = ["070701", "00000001", "000041E8", "00000000", "00000000", "00000002", "00000000"].joined()
        #expect(header.hasPrefix(prefix))
        #expect(header.hasSuffix("0000000400000000"))
        #expect(Array(bytes[110..<116]) == [0x65, 0x74, 0x63, 0, 0, 0])
        #expect(Array(bytes[116..<122]) == Array("070701".utf8))
    }

    @Test("rejects bad and repeated paths; re-adding a directory updates its mode")
    func paths() throws {
        var archive = CPIOArchive()
        for bad in ["", "/", "a/../b", "a/./b", "a//b", "tmp/"] {
            #expect(throws: InitramfsError.self, "\(bad)") { try archive.add(bad, .directory(mode: 0o755)) }
        }
        try archive.add("f", .file(mode: 0o644, contents: [1]))
        #expect(throws: InitramfsError.invalidArchivePath("f", reason: "already in the archive")) {
            try archive.add("f", .file(mode: 0o644, contents: [2]))
        }
        #expect(throws: InitramfsError.invalidArchivePath("f/x", reason: "f is not a directory")) {
            try archive.add("f/x", .file(mode: 0o644, contents: []))
        }
        try archive.add("tmp/a", .file(mode: 0o644, contents: []))
        try archive.add("tmp", .directory(mode: 0o1777))
        #expect(archive.members.map(\.path) == ["f", "tmp", "tmp/a"])
        #expect(archive.members[1].entry == .directory(mode: 0o1777))
    }
}

import Testing

@Suite(.serialized, .timeLimit(.minutes(1))) struct DiskLockTests {
    /// The same image given twice to one VM would be written by two disks: the second open is refused.
    @Test func sameImageTwiceInOneVMIsRefused() throws {
        let path = "/tmp/tern-disk-lock-\(UInt32.random(in: 0...UInt32.max)).raw"
        try #require(writeFile(path, String(repeating: "\0", count: 1 << 20)))
        defer { _ = unlinkFile(path) }
        let result = try runProcess([
            Repository.ternBinary(), "run", "--kernel", Repository.guest("hello"),
            "--disk", "path=\(path),format=raw", "--disk", "path=\(path),format=raw",
        ])
        #expect(result.status == 1)
        #expect(result.stderr.contains("disk \(path): image is in use by this process (write lock held)"), "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1)
        #expect(!result.stdout.contains("Hello from a Tern test guest"))
    }
}

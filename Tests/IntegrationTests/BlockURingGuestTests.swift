import Glibc
import Logging
import Synchronization
import Testing
import VMM

/// The `blk` test guest over `aio=io_uring`: its writes, a deep-queue bench and a check of the pattern all go
/// through the kernel's io_uring, in the page cache and with O_DIRECT.
@Suite(.serialized, .timeLimit(.minutes(5))) struct BlockURingGuestTests {
    /// The machine's log lines.
    final class LogLines: Sendable {
        let lines = Mutex<[String]>([])
    }

    /// Keeps every log line in `sink`.
    struct RecordingLog: LogHandler {
        let sink: LogLines
        var logLevel: Logger.Level = .debug
        var metadata: Logger.Metadata = [:]

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) { sink.lines.withLock { $0.append("\(event.message)") } }
    }

    /// Boots the blk guest with `cmdline` on `disk`, expecting it to exit 0; returns its output and whether the
    /// disk's reads and writes went through io_uring.
    static func run(_ cmdline: String, disk: String, transport: VirtioTransportKind) throws -> (ring: Bool, output: String) {
        let sink = LogLines()
        let console = CapturedOutput()
        let machine = try Machine(
            config: VMConfig(kernel: Repository.guest("blk"), cmdline: cmdline, disks: [DiskSetting(parsing: disk)],
                             virtioTransport: transport),
            console: console, logger: Logger(label: "tern") { _ in RecordingLog(sink: sink) })
        let outcome = machine.run()
        #expect(outcome == .guestExit(0), "\(cmdline) on \(disk): \(console.text)")
        let log = sink.lines.withLock { $0 }
        #expect(!log.contains { $0.contains("io_uring is unavailable") }, "\(log)")
        return (log.contains("virtio-blk 0: reads and writes go through io_uring"), console.text)
    }

    /// Creates a 16 MiB scratch file in the package's .build directory (O_DIRECT-capable) and returns its path.
    static func scratch(_ name: String) throws -> String {
        let path = "\(Repository.root)/.build/tern-uring-\(getpid())-\(name)"
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(descriptor >= 0 && ftruncate(descriptor, 16 << 20) == 0)
        close(descriptor)
        return path
    }

    @Test(arguments: ["writeback", "none"], VirtioTransportKind.allCases)
    func guestDataGoesThroughTheRing(cache: String, transport: VirtioTransportKind) throws {
        let path = try Self.scratch("\(cache)-\(transport)")
        defer { unlink(path) }
        let disk = "path=\(path),format=raw,cache=\(cache),aio=io_uring"
        let write = try Self.run("seed=3", disk: disk, transport: transport)
        #expect(write.ring, "the disk's reads and writes go through io_uring")
        #expect(write.output.contains("wrote and verified 521 sectors on a 16 MiB disk"))
        let bench = try Self.run("mode=bench qd=16 bench-cycles=200000000 seed=3", disk: disk, transport: transport)
        #expect(bench.output.contains("16 requests in flight") && bench.output.contains("blk-bench: "))
        let check = try Self.run("mode=check-pattern seed=3", disk: disk, transport: transport)
        #expect(check.output.contains("pattern verified on 521 sectors"), "bench writes keep the pattern")
    }

    /// `aio=threads` and `aio=sync` use no ring, and neither does a qcow2 image, which keeps the other engines.
    @Test func otherEnginesOpenNoRing() throws {
        let raw = try Self.scratch("sync")
        defer { unlink(raw) }
        #expect(try Self.run("seed=4", disk: "path=\(raw),format=raw,aio=sync", transport: .mmio).ring == false)
        #expect(try Self.run("mode=check-pattern seed=4", disk: "path=\(raw),format=raw,aio=threads", transport: .mmio).ring == false)
        let qcow2 = "\(Repository.root)/.build/tern-uring-\(getpid())-image.qcow2"
        defer { unlink(qcow2) }
        let created = try runProcess([Repository.ternBinary(), "image", "create", "--format", "qcow2", qcow2, "16M"])
        try #require(created.status == 0, "tern image create: \(created.stderr)")
        #expect(try Self.run("seed=5", disk: "path=\(qcow2),format=qcow2", transport: .mmio).ring == false)
    }
}

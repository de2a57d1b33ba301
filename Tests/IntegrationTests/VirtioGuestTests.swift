import Foundation
import Glibc
import Testing
import VMM

/// The `rng` test guest drives virtio-rng over virtio-mmio from ring 3, as a polling driver.
@Suite(.serialized, .timeLimit(.minutes(3))) struct VirtioGuestTests {
    @Test(arguments: VirtioTransportKind.allCases) func rngGuestGetsRandomBytes(transport: VirtioTransportKind) throws {
        let run = try boot(VMConfig(kernel: Repository.guest("rng"), rng: true, virtioTransport: transport))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        let location = transport == .mmio ? "virtio-mmio at 0xfeb00000" : "virtio-pci at 00:01.0"
        #expect(run.output.contains("rng: got 256 random bytes from virtio-rng (\(location))"))
    }

    @Test func withoutTheDeviceTheGuestFindsNone() throws {
        let run = try boot(VMConfig(kernel: Repository.guest("rng")))
        #expect(run.outcome == .guestExit(3))
        #expect(run.output.contains("rng: no virtio-rng device"))
    }

    /// A guest that hands the device a hostile ring breaks only that device: it reports DEVICE_NEEDS_RESET (0x40),
    /// and the VM keeps running to the guest's own exit.
    @Test(arguments: ["bad-desc-oob", "bad-desc-loop"], VirtioTransportKind.allCases)
    func hostileRingPutsTheDeviceIntoNeedsReset(mode: String, transport: VirtioTransportKind) throws {
        let run = try boot(VMConfig(kernel: Repository.guest("rng"), cmdline: "mode=\(mode)", rng: true, virtioTransport: transport))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        let status = try #require(run.output.split(whereSeparator: \.isNewline).last { $0.hasPrefix("rng: device status 0x") })
        let value = try #require(UInt8(status.dropFirst("rng: device status 0x".count).prefix(2), radix: 16))
        #expect(value & 0x40 != 0, "DEVICE_NEEDS_RESET is set")
    }

    @Test func kernelCommandLineNamesTheDevice() throws {
        let machine = try Machine(config: VMConfig(kernel: Repository.guest("hello"), cmdline: "quiet -- init-arg", rng: true,
                                                   virtioTransport: .mmio),
                                  console: DiscardOutput())
        #expect(machine.commandLine.hasPrefix("quiet virtio_mmio.device=512@0xfeb00000:16"))
        #expect(machine.commandLine.hasSuffix(" -- init-arg"))
    }
}

/// The `blk` test guest drives virtio-blk over virtio-mmio against raw and qcow2 images.
@Suite(.serialized, .timeLimit(.minutes(3))) struct VirtioBlockGuestTests {
    static func scratch(_ name: String) -> String { "/tmp/tern-blk-\(getpid())-\(name)" }

    static func ternImage(_ arguments: [String]) throws {
        let result = try runProcess([Repository.ternBinary(), "image"] + arguments)
        try #require(result.status == 0, "tern image \(arguments): \(result.stderr)")
    }

    @Test(arguments: VirtioTransportKind.allCases) func rawDiskKeepsWhatTheGuestWrote(transport: VirtioTransportKind) throws {
        let path = Self.scratch("raw-\(transport)")
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(fd >= 0 && ftruncate(fd, 64 << 20) == 0)
        close(fd)
        defer { unlink(path) }
        let write = try boot(VMConfig(kernel: Repository.guest("blk"), disks: [DiskSetting(path: path, serial: "tern0")],
                                      virtioTransport: transport))
        #expect(write.outcome == .guestExit(0), "output: \(write.output)")
        #expect(write.output.contains("wrote and verified 521 sectors on a 64 MiB disk (serial \"tern0\")"))
        let check = try boot(VMConfig(kernel: Repository.guest("blk"), cmdline: "mode=check-pattern", disks: [DiskSetting(path: path)],
                                      virtioTransport: transport))
        #expect(check.outcome == .guestExit(0), "output: \(check.output)")
        let readOnly = try boot(VMConfig(kernel: Repository.guest("blk"), cmdline: "mode=read-only",
                                         disks: [DiskSetting(path: path, readOnly: true)], virtioTransport: transport))
        #expect(readOnly.outcome == .guestExit(0), "output: \(readOnly.output)")
        #expect(readOnly.output.contains("read-only disk refused the write"))
    }

    /// A guest writes through an overlay: its data lands in the overlay, the backing image keeps the old data,
    /// and qemu-img finds both images consistent.
    @Test func qcow2OverlayOnABackingFile() throws {
        let base = Self.scratch("base.qcow2")
        let top = Self.scratch("top.qcow2")
        defer { unlink(base); unlink(top) }
        try Self.ternImage(["create", "--format", "qcow2", base, "64M"])
        let first = try boot(VMConfig(kernel: Repository.guest("blk"), cmdline: "seed=1", disks: [DiskSetting(path: base)]))
        #expect(first.outcome == .guestExit(0), "output: \(first.output)")
        try Self.ternImage(["create", "--format", "qcow2", "--backing", base, "--backing-format", "qcow2", top])
        let inherited = try boot(VMConfig(kernel: Repository.guest("blk"), cmdline: "mode=check-pattern seed=1",
                                          disks: [DiskSetting(path: top, format: .qcow2)]))
        #expect(inherited.outcome == .guestExit(0), "the overlay reads the backing file's data: \(inherited.output)")
        let overwrite = try boot(VMConfig(kernel: Repository.guest("blk"), cmdline: "seed=2", disks: [DiskSetting(path: top)]))
        #expect(overwrite.outcome == .guestExit(0), "output: \(overwrite.output)")
        let baseKept = try boot(VMConfig(kernel: Repository.guest("blk"), cmdline: "mode=check-pattern seed=1",
                                         disks: [DiskSetting(path: base, readOnly: true)]))
        #expect(baseKept.outcome == .guestExit(0), "the backing file is unchanged: \(baseKept.output)")
        for image in [base, top] {
            let check = try runProcess(["/usr/bin/qemu-img", "check", image])
            #expect(check.status == 0, "qemu-img check \(image): \(check.stdout) \(check.stderr)")
        }
    }

    /// Sixteen requests in flight, reaped in batches: exercises notification suppression on both sides and the
    /// device's work budget (a device that stops at its budget must come back without a new notification).
    @Test(arguments: VirtioTransportKind.allCases)
    func deepQueueBenchKeepsTheData(transport: VirtioTransportKind) throws {
        let path = Self.scratch("bench-\(transport)")
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(fd >= 0 && ftruncate(fd, 16 << 20) == 0)
        close(fd)
        defer { unlink(path) }
        let disks = [DiskSetting(path: path)]
        let write = try boot(VMConfig(kernel: Repository.guest("blk"), disks: disks, virtioTransport: transport))
        #expect(write.outcome == .guestExit(0), "output: \(write.output)")
        let bench = try boot(VMConfig(kernel: Repository.guest("blk"), cmdline: "mode=bench qd=16 bench-cycles=200000000",
                                      disks: disks, virtioTransport: transport))
        #expect(bench.outcome == .guestExit(0), "output: \(bench.output)")
        #expect(bench.output.contains("16 requests in flight"))
        #expect(bench.output.contains("blk-bench: "))
        let check = try boot(VMConfig(kernel: Repository.guest("blk"), cmdline: "mode=check-pattern", disks: disks,
                                      virtioTransport: transport))
        #expect(check.outcome == .guestExit(0), "bench writes keep the pattern: \(check.output)")
    }

    @Test func missingDiskIsAClearError() throws {
        do {
            _ = try Machine(config: VMConfig(kernel: Repository.guest("blk"), disks: [DiskSetting(path: "/nonexistent/disk.img")]),
                            console: DiscardOutput())
            Issue.record("a missing disk was accepted")
        } catch {
            #expect(String(describing: error).hasPrefix("disk /nonexistent/disk.img: "))
        }
    }
}

/// The `console` test guest talks over virtio-console (hvc0): output reaches the console target, and host input
/// typed into the machine reaches the guest's receive queue.
@Suite(.serialized, .timeLimit(.minutes(3))) struct VirtioConsoleGuestTests {
    @Test(arguments: VirtioTransportKind.allCases) func guestOutputReachesTheConsole(transport: VirtioTransportKind) throws {
        let run = try boot(VMConfig(kernel: Repository.guest("console"), virtioConsole: true, virtioTransport: transport))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        #expect(run.output.contains("console: hello over virtio-console"))
    }

    @Test(arguments: VirtioTransportKind.allCases) func hostInputReachesTheGuest(transport: VirtioTransportKind) throws {
        let console = CapturedOutput()
        let machine = try Machine(config: VMConfig(kernel: Repository.guest("console"), cmdline: "expect-input=1",
                                                   virtioConsole: true, virtioTransport: transport), console: console)
        // A real thread, not a task: the VM blocks this test's thread, and other tests may hold the rest of the pool.
        let typist = Thread {
            for _ in 0..<500 where !console.text.contains("console: sent") { usleep(10_000) }
            // The guest posts its receive buffers right after it reports the send: type until it has room.
            for _ in 0..<500 where machine.typeIntoConsole(Array("ping from the host\n".utf8)) == 0 { usleep(10_000) }
        }
        typist.start()
        let outcome = machine.run()
        #expect(outcome == .guestExit(0), "output: \(console.text)")
        #expect(console.text.contains("console: got ping from the host"))
    }
}

/// The `hostile` guest attacks every VirtIO device with malformed queues, one attack at a time: each attacked device
/// must go to DEVICE_NEEDS_RESET, every other device must keep serving, and a reset must bring the attacked one back.
@Suite(.serialized, .timeLimit(.minutes(3))) struct HostileGuestTests {
    @Test(arguments: VirtioTransportKind.allCases)
    func everyAttackBreaksOnlyTheAttackedDevice(transport: VirtioTransportKind) throws {
        let path = "/tmp/tern-hostile-\(getpid())-\(transport).img"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(fd >= 0 && ftruncate(fd, 1 << 20) == 0)
        close(fd)
        defer { unlink(path) }
        let config = try VMConfig(kernel: Repository.guest("hostile"), rng: true, disks: [DiskSetting(path: path)],
                                  virtioConsole: true, virtioTransport: transport, nets: [NetSetting.parse("user")],
                                  vsock: VsockSetting(guestCID: 3, socketPath: "/tmp/tern-hostile-\(getpid())-\(transport).sock"))
        let run = try boot(config)
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        #expect(run.output.contains("hostile: 35 attacks on 5 devices, each device reset itself and the others kept working"))
        for attack in ["loop", "out-of-ram", "oversized", "bad-head", "bad-next", "avail-jump", "wrong-direction"] {
            for device in ["virtio-rng", "virtio-blk", "virtio-console", "virtio-net", "virtio-vsock"] {
                #expect(run.output.contains("hostile: \(device) \(attack): DEVICE_NEEDS_RESET"), "\(device) \(attack)")
            }
        }
    }
}

import Foundation
import Glibc
import Testing
import VMM

/// The `rng` test guest drives virtio-rng over virtio-mmio from ring 3, as a polling driver.
@Suite(.serialized) struct VirtioGuestTests {
    @Test func rngGuestGetsRandomBytes() throws {
        let run = try boot(VMConfig(kernel: Repository.guest("rng"), rng: true))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        #expect(run.output.contains("rng: got 256 random bytes from virtio-rng (virtio-mmio at 0xfeb00000)"))
    }

    @Test func withoutTheDeviceTheGuestFindsNone() throws {
        let run = try boot(VMConfig(kernel: Repository.guest("rng")))
        #expect(run.outcome == .guestExit(3))
        #expect(run.output.contains("rng: no virtio-rng device"))
    }

    /// A guest that hands the device a hostile ring breaks only that device: it reports DEVICE_NEEDS_RESET (0x40),
    /// and the VM keeps running to the guest's own exit.
    @Test(arguments: ["bad-desc-oob", "bad-desc-loop"])
    func hostileRingPutsTheDeviceIntoNeedsReset(mode: String) throws {
        let run = try boot(VMConfig(kernel: Repository.guest("rng"), cmdline: "mode=\(mode)", rng: true))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        let status = try #require(run.output.split(whereSeparator: \.isNewline).last { $0.hasPrefix("rng: device status 0x") })
        let value = try #require(UInt8(status.dropFirst("rng: device status 0x".count).prefix(2), radix: 16))
        #expect(value & 0x40 != 0, "DEVICE_NEEDS_RESET is set")
    }

    @Test func kernelCommandLineNamesTheDevice() throws {
        let machine = try Machine(config: VMConfig(kernel: Repository.guest("hello"), cmdline: "quiet -- init-arg", rng: true),
                                  console: DiscardOutput())
        #expect(machine.commandLine.hasPrefix("quiet virtio_mmio.device=512@0xfeb00000:16"))
        #expect(machine.commandLine.hasSuffix(" -- init-arg"))
    }
}

/// The `blk` test guest drives virtio-blk over virtio-mmio against raw and qcow2 images.
@Suite(.serialized) struct VirtioBlockGuestTests {
    static func scratch(_ name: String) -> String { "/tmp/tern-blk-\(getpid())-\(name)" }

    static func ternImage(_ arguments: [String]) throws {
        let result = try runProcess([Repository.ternBinary(), "image"] + arguments)
        try #require(result.status == 0, "tern image \(arguments): \(result.stderr)")
    }

    @Test func rawDiskKeepsWhatTheGuestWrote() throws {
        let path = Self.scratch("raw")
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(fd >= 0 && ftruncate(fd, 64 << 20) == 0)
        close(fd)
        defer { unlink(path) }
        let write = try boot(VMConfig(kernel: Repository.guest("blk"), disks: [DiskSetting(path: path, serial: "tern0")]))
        #expect(write.outcome == .guestExit(0), "output: \(write.output)")
        #expect(write.output.contains("wrote and verified 521 sectors on a 64 MiB disk (serial \"tern0\")"))
        let check = try boot(VMConfig(kernel: Repository.guest("blk"), cmdline: "mode=check-pattern", disks: [DiskSetting(path: path)]))
        #expect(check.outcome == .guestExit(0), "output: \(check.output)")
        let readOnly = try boot(VMConfig(kernel: Repository.guest("blk"), cmdline: "mode=read-only",
                                         disks: [DiskSetting(path: path, readOnly: true)]))
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
@Suite(.serialized) struct VirtioConsoleGuestTests {
    @Test func guestOutputReachesTheConsole() throws {
        let run = try boot(VMConfig(kernel: Repository.guest("console"), virtioConsole: true))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        #expect(run.output.contains("console: hello over virtio-console"))
    }

    @Test func hostInputReachesTheGuest() throws {
        let console = CapturedOutput()
        let machine = try Machine(config: VMConfig(kernel: Repository.guest("console"), cmdline: "expect-input=1",
                                                   virtioConsole: true), console: console)
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

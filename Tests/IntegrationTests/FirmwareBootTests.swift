import Glibc
import Testing
import VMM

/// SeaBIOS boots the boot-sector disk (Guests/bootsector) under Tern and, for comparison, under QEMU's q35.
@Suite(.serialized) struct FirmwareBootTests {
    /// What the boot sector prints when every check passes, and the byte it then writes to port 0x501.
    static let expectedLines = ["boot: int 10h ok", "boot: COM1 ok", "boot: int 13h ok", "boot: status 0x27"]
    static let allChecksPassed: UInt8 = 0x27
    /// Long enough for SeaBIOS in emulated ring 0 on a loaded host; a boot that fails retries after 60 s.
    static let watchdogSeconds = 150

    static func image() throws -> String {
        let path = "\(Repository.root)/Guests/build/bootsector.img"
        try #require(access(path, R_OK) == 0, "\(path) is missing: run `make -C Guests` first")
        return path
    }

    /// Boots `config`, stopping the machine if it has not finished within the watchdog's time.
    static func bootWithWatchdog(_ config: VMConfig) throws -> GuestRun {
        let console = CapturedOutput()
        let machine = try Machine(config: config, console: console)
        let watchdog = Task.detached {
            try await Task.sleep(for: .seconds(watchdogSeconds))
            machine.stop(.stoppedByHost(reason: "watchdog"))
        }
        let outcome = machine.run()
        watchdog.cancel()
        return GuestRun(output: console.text, outcome: outcome)
    }

    @Test(.timeLimit(.minutes(4)))
    func seaBIOSBootsTheBootSectorOverVirtioBlk() throws {
        let log = "\(Repository.root)/.build/firmware-boot-test.log"
        _ = unlinkFile(log)
        let run = try Self.bootWithWatchdog(VMConfig(
            kernel: nil, firmware: FirmwareSetting(log: log), console: .none,
            disks: [DiskSetting(path: try Self.image(), readOnly: true, format: .raw)]))
        #expect(run.outcome == .guestExit(Self.allChecksPassed), "output: \(run.output)")
        for line in Self.expectedLines {
            #expect(run.output.contains(line), "missing '\(line)' in: \(run.output)")
        }
        #expect(run.output.contains("SeaBIOS (version"))
        let firmwareLog = readText(log)
        #expect(firmwareLog.contains("Found QEMU fw_cfg"))
        #expect(firmwareLog.contains("QEMU fw_cfg DMA interface supported"))
        #expect(firmwareLog.contains("(via xsdt)"), "the ACPI tables came through the table loader")
        #expect(firmwareLog.contains("Searching bootorder for: /pci@i0cf8/*@1"))
        #expect(firmwareLog.contains("Booting from 0000:7c00"))
    }

    @Test(.timeLimit(.minutes(4)))
    func qemuBootsTheSameImage() throws {
        let qemu = "/usr/bin/qemu-system-x86_64"
        try #require(access(qemu, X_OK) == 0, "\(qemu) is missing: apt-get install qemu-system-x86")
        let serial = "\(Repository.root)/.build/firmware-boot-qemu-serial.txt"
        _ = unlinkFile(serial)
        let result = try runProcess([
            "/usr/bin/timeout", "\(Self.watchdogSeconds)", qemu, "-M", "q35", "-enable-kvm", "-m", "256M", "-nographic",
            "-nodefaults", "-no-reboot", "-serial", "file:\(serial)", "-device", "isa-debug-exit,iobase=0x501,iosize=1",
            "-drive", "file=\(try Self.image()),format=raw,if=none,id=d0,readonly=on", "-device", "virtio-blk-pci,drive=d0",
        ])
        // isa-debug-exit reports (byte << 1) | 1.
        #expect(result.status == Int32(Self.allChecksPassed) << 1 | 1, "stderr: \(result.stderr)")
        let output = readText(serial)
        for line in Self.expectedLines {
            #expect(output.contains(line), "missing '\(line)' in: \(output)")
        }
    }
}

import Glibc
import Testing
import VMM

/// SeaBIOS boots the boot-sector disk (Guests/bootsector) over virtio-blk, AHCI and an AHCI CD-ROM (El Torito)
/// under Tern and, for comparison, the same images under QEMU's q35.
@Suite(.serialized) struct FirmwareBootTests {
    /// What the boot sector prints when every check passes, and the byte it then writes to port 0x501.
    static let expectedLines = ["boot: COM1 ok", "boot: int 10h ok", "boot: int 13h ok", "boot: status 0x27"]
    static let allChecksPassed: UInt8 = 0x27
    /// Long enough for SeaBIOS in emulated ring 0 on a loaded host; a boot that fails retries after 60 s.
    static let watchdogSeconds = 150

    /// The boot device: the disk over virtio-blk or on the AHCI controller, or the ISO as an AHCI CD-ROM.
    enum Device: String, CaseIterable, CustomStringConvertible {
        case virtio, ahciDisk, ahciCDROM

        var description: String { rawValue }

        func image() throws -> String {
            let path = "\(Repository.root)/Guests/build/bootsector.\(self == .ahciCDROM ? "iso" : "img")"
            try #require(access(path, R_OK) == 0, "\(path) is missing: run `make -C Guests` first")
            return path
        }

        func disk() throws -> DiskSetting {
            switch self {
            case .virtio: DiskSetting(path: try image(), readOnly: true, format: .raw)
            case .ahciDisk: DiskSetting(path: try image(), readOnly: true, format: .raw, interface: .ahci)
            case .ahciCDROM: DiskSetting(path: try image(), format: .raw, interface: .ahci, media: .cdrom)
            }
        }

        /// The same device on QEMU's q35 (whose ICH9 AHCI controller has buses ide.0 to ide.5).
        func qemuArguments() throws -> [String] {
            let drive = "file=\(try image()),format=raw,if=none,id=d0,readonly=on"
            switch self {
            case .virtio: return ["-drive", drive, "-device", "virtio-blk-pci,drive=d0"]
            // QEMU's ide-hd refuses a read-only node: a snapshot overlay keeps the image untouched instead.
            case .ahciDisk: return ["-drive", "file=\(try image()),format=raw,if=none,id=d0,snapshot=on", "-device", "ide-hd,drive=d0,bus=ide.0"]
            case .ahciCDROM: return ["-drive", drive, "-device", "ide-cd,drive=d0,bus=ide.0"]
            }
        }

        /// What SeaBIOS's debug log says when it found the device.
        var firmwareLogLine: String {
            switch self {
            case .virtio: "found virtio-blk at 00:01.0"
            case .ahciDisk: "AHCI/0: registering: \"AHCI/0: Tern SATA disk"
            case .ahciCDROM: "AHCI/0: registering: \"DVD/CD [AHCI/0: Tern SATA DVD-ROM"
            }
        }
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

    @Test(.timeLimit(.minutes(4)), arguments: Device.allCases)
    func seaBIOSBootsTheBootSector(from device: Device) throws {
        let log = "\(Repository.root)/.build/firmware-boot-test-\(device).log"
        _ = unlinkFile(log)
        let run = try Self.bootWithWatchdog(VMConfig(
            kernel: nil, firmware: FirmwareSetting(log: log), console: .none, disks: [try device.disk()]))
        #expect(run.outcome == .guestExit(Self.allChecksPassed), "output: \(run.output)")
        for line in Self.expectedLines {
            #expect(run.output.contains(line), "missing '\(line)' in: \(run.output)")
        }
        #expect(run.output.contains("SeaBIOS (version"))
        let firmwareLog = readText(log)
        #expect(firmwareLog.contains("Found QEMU fw_cfg"))
        #expect(firmwareLog.contains("QEMU fw_cfg DMA interface supported"))
        #expect(firmwareLog.contains("(via xsdt)"), "the ACPI tables came through the table loader")
        #expect(firmwareLog.contains(device.firmwareLogLine))
        #expect(firmwareLog.contains("Booting from 0000:7c00"))
    }

    @Test(.timeLimit(.minutes(4)), arguments: Device.allCases)
    func qemuBootsTheSameImage(from device: Device) throws {
        let qemu = "/usr/bin/qemu-system-x86_64"
        try #require(access(qemu, X_OK) == 0, "\(qemu) is missing: apt-get install qemu-system-x86")
        let serial = "\(Repository.root)/.build/firmware-boot-qemu-serial-\(device).txt"
        _ = unlinkFile(serial)
        let result = try runProcess([
            "/usr/bin/timeout", "\(Self.watchdogSeconds)", qemu, "-M", "q35", "-enable-kvm", "-m", "256M", "-nographic",
            "-nodefaults", "-no-reboot", "-serial", "file:\(serial)", "-device", "isa-debug-exit,iobase=0x501,iosize=1",
        ] + (try device.qemuArguments()))
        // isa-debug-exit reports (byte << 1) | 1.
        #expect(result.status == Int32(Self.allChecksPassed) << 1 | 1, "stderr: \(result.stderr)")
        let output = readText(serial)
        for line in Self.expectedLines {
            #expect(output.contains(line), "missing '\(line)' in: \(output)")
        }
    }
}

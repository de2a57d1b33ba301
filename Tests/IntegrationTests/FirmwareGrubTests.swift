import Glibc
import Testing
import VMM

/// The firmware slow tier: Debian's GRUB (grub-pc-bin, installed by .ci/run) on an El Torito CD-ROM, booted by
/// SeaBIOS from the AHCI CD-ROM to its menu on COM1; the menu's entry exits through port 0x501. The same image
/// boots under QEMU's q35 for comparison. `scripts/test` runs this suite with the other slow one, on its own.
@Suite(.serialized) struct FirmwareGrubTests {
    /// GRUB decompresses and runs itself in emulated ring 0 on software-virtualisation hosts: minutes under load.
    static let budgetSeconds = 600
    static let exitStatus: UInt8 = 42
    static let expectedLines = ["GNU GRUB", "Tern GRUB test entry", "tern: grub entry chosen"]

    /// A standalone GRUB (its configuration in a memdisk) wrapped in an ISO by the boot-sector disk's ISO writer.
    static func grubISO() throws -> String {
        let tool = "/usr/bin/grub-mkstandalone"
        try #require(access(tool, X_OK) == 0, "\(tool) is missing: apt-get install grub-pc-bin (.ci/run does)")
        let directory = "\(Repository.root)/.build/firmware-grub"
        mkdir(directory, 0o755)
        let image = "\(directory)/grub-eltorito.img"
        let iso = "\(directory)/grub.iso"
        let built = try runProcess([
            tool, "-O", "i386-pc-eltorito", "-o", image, "--install-modules=normal serial terminal echo iorw configfile test",
            "--modules=serial", "--locales=", "--fonts=", "--themes=",
            "boot/grub/grub.cfg=\(Repository.root)/Guests/grub/grub.cfg",
        ])
        try #require(built.status == 0, "grub-mkstandalone: \(built.stderr)")
        let wrapped = try runProcess(["/usr/bin/python3", "\(Repository.root)/Guests/bootsector/make-iso.py", image, iso])
        try #require(wrapped.status == 0, "make-iso.py: \(wrapped.stderr)")
        return iso
    }

    @Test(.timeLimit(.minutes(12)))
    func seaBIOSBootsGRUBToItsMenuFromTheCDROM() throws {
        let iso = try Self.grubISO()
        let console = CapturedOutput()
        let machine = try Machine(config: VMConfig(
            kernel: nil, firmware: FirmwareSetting(), console: .none,
            disks: [DiskSetting(path: iso, format: .raw, interface: .ahci, media: .cdrom)]), console: console)
        let budget = Self.budgetSeconds
        let watchdog = Task.detached {
            try await Task.sleep(for: .seconds(budget))
            machine.stop(.stoppedByHost(reason: "watchdog"))
        }
        let outcome = machine.run()
        watchdog.cancel()
        #expect(outcome == .guestExit(Self.exitStatus), "output: \(console.text)")
        for line in Self.expectedLines {
            #expect(console.text.contains(line), "missing '\(line)'")
        }
    }

    @Test(.timeLimit(.minutes(12)))
    func qemuBootsTheSameGRUB() throws {
        let qemu = "/usr/bin/qemu-system-x86_64"
        try #require(access(qemu, X_OK) == 0, "\(qemu) is missing: apt-get install qemu-system-x86")
        let iso = try Self.grubISO()
        let serial = "\(Repository.root)/.build/firmware-grub/qemu-serial.txt"
        _ = unlinkFile(serial)
        let result = try runProcess([
            "/usr/bin/timeout", "\(Self.budgetSeconds)", qemu, "-M", "q35", "-enable-kvm", "-m", "256M", "-nographic",
            "-nodefaults", "-no-reboot", "-serial", "file:\(serial)", "-device", "isa-debug-exit,iobase=0x501,iosize=1",
            "-cdrom", iso,
        ])
        #expect(result.status == Int32(Self.exitStatus) << 1 | 1, "stderr: \(result.stderr)")
        let output = readText(serial)
        for line in Self.expectedLines {
            #expect(output.contains(line), "missing '\(line)'")
        }
    }
}

import Firmware
import Testing
@testable import VMM

@Suite struct FirmwareSettingTests {
    @Test func seabiosNamesDebiansImage() throws {
        #expect(try FirmwareSetting(parsing: "seabios") == FirmwareSetting(path: FirmwareImage.seaBIOSPath))
        #expect(try FirmwareSetting(parsing: "/x/bios.bin,log=/tmp/fw.log") == FirmwareSetting(path: "/x/bios.bin", log: "/tmp/fw.log"))
    }

    @Test(arguments: ["", ",log=x", "seabios,log=", "seabios,verbose"])
    func badSpecsAreRefused(text: String) {
        #expect(throws: ConfigError.self) { try FirmwareSetting(parsing: text) }
    }

    @Test func kernelAndFirmwareExcludeEachOther() throws {
        #expect(throws: ConfigError.self) { try VMConfig(kernel: nil).validate() }
        #expect(throws: ConfigError.self) { try VMConfig(kernel: "k", firmware: FirmwareSetting()).validate() }
        try VMConfig(kernel: nil, firmware: FirmwareSetting()).validate()
    }

    @Test func jsonTakesFirmware() throws {
        let config = try VMConfig.decode(json: Array(#"{"firmware": "seabios,log=/tmp/l"}"#.utf8), source: "test")
        #expect(config.firmware == FirmwareSetting(log: "/tmp/l"))
        #expect(config.kernel == nil)
    }
}

@Suite struct DiskInterfaceSettingTests {
    @Test func interfaceAndMediaParse() throws {
        let cdrom = try DiskSetting(parsing: "path=/x.iso,interface=ahci,media=cdrom")
        #expect(cdrom == DiskSetting(path: "/x.iso", interface: .ahci, media: .cdrom))
        #expect(cdrom.readOnly, "a CD-ROM is read-only")
        #expect(try DiskSetting(parsing: cdrom.description) == cdrom)
        #expect(try DiskSetting(parsing: "path=/d,interface=ahci").interface == .ahci)
        #expect(try DiskSetting(parsing: "path=/d").interface == .virtio)
    }

    @Test(arguments: ["path=/x.iso,media=cdrom", "path=/d,interface=ide", "path=/d,media=tape"])
    func badCombinationsAreRefused(text: String) {
        #expect(throws: ConfigError.self) { try DiskSetting(parsing: text) }
    }

    @Test func bootOrderNamesFirmwarePaths() {
        let disks = [DiskSetting(path: "a", interface: .ahci, media: .cdrom), DiskSetting(path: "b"),
                     DiskSetting(path: "c", interface: .ahci), DiskSetting(path: "d")]
        #expect(FirmwareBoot.bootOrder(disks, ahciSlot: 3) == [
            "/pci@i0cf8/*@3/drive@0/disk@0", "/pci@i0cf8/*@1", "/pci@i0cf8/*@3/drive@1/disk@0", "/pci@i0cf8/*@2",
        ])
    }
}

@Suite struct BootOrderSettingTests {
    @Test func kindsGoFirstInTheirOrder() throws {
        let disks = [DiskSetting(path: "a"), DiskSetting(path: "b", interface: .ahci, media: .cdrom), DiskSetting(path: "c")]
        #expect(FirmwareBoot.bootOrder(disks, ahciSlot: 3, kinds: [.cdrom]) == [
            "/pci@i0cf8/*@3/drive@0/disk@0", "/pci@i0cf8/*@1", "/pci@i0cf8/*@2",
        ])
        let setting = try FirmwareSetting(parsing: "seabios,boot=cdrom+disk")
        #expect(setting.bootOrder == [.cdrom, .disk])
        #expect(try FirmwareSetting(parsing: setting.description) == setting)
        #expect(throws: ConfigError.self) { try FirmwareSetting(parsing: "seabios,boot=cdrom+cdrom") }
        #expect(throws: ConfigError.self) { try FirmwareSetting(parsing: "seabios,boot=floppy") }
    }
}

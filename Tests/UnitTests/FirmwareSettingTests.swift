import Firmware
import Testing
import VMM

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

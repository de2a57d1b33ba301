import Testing
import VMM

@Suite struct SettingsTests {
    @Test func memorySizes() throws {
        #expect(try MemorySize(parsing: "256M").bytes == 256 << 20)
        #expect(try MemorySize(parsing: "2G").bytes == 2 << 30)
        #expect(try MemorySize(parsing: "2GiB").bytes == 2 << 30)
        #expect(try MemorySize(parsing: "4096").bytes == 4096)
        #expect(try MemorySize(parsing: "512k").bytes == 512 << 10)
        #expect(MemorySize(bytes: 256 << 20).description == "256M")
        for bad in ["", "M", "-1M", "0", "12X", "1.5G", "99999999999999999999T"] {
            #expect(throws: ConfigError.self) { try MemorySize(parsing: bad) }
        }
    }

    @Test func pinListsGiveOneSetPerVCPU() throws {
        #expect(try PinList(parsing: "0,1").sets == [CPUSet(cpus: [0]), CPUSet(cpus: [1])])
        #expect(try PinList(parsing: "0-1,2+4").sets == [CPUSet(cpus: [0, 1]), CPUSet(cpus: [2, 4])])
        #expect(try PinList(parsing: "3-5+1").description == "1+3-5")
        for bad in ["", ",", "a", "1,,2", "2-1", "1-", "-1", "1+", "0-99999"] {
            #expect(throws: ConfigError.self) { try PinList(parsing: bad) }
        }
    }

    @Test func pinListValidationChecksCountAndHostCores() throws {
        let pins = try PinList(parsing: "0,1")
        try pins.validate(vcpuCount: 2, availableCPUs: [0, 1])
        #expect(throws: ConfigError.self) { try pins.validate(vcpuCount: 3, availableCPUs: [0, 1]) }
        #expect(throws: ConfigError.self) { try PinList(parsing: "0,7").validate(vcpuCount: 2, availableCPUs: [0, 1]) }
    }

    @Test func consoleSettings() throws {
        #expect(try ConsoleSetting(parsing: "stdio") == .stdio)
        #expect(try ConsoleSetting(parsing: "none") == ConsoleSetting.none)
        #expect(try ConsoleSetting(parsing: "file:/tmp/x.log") == .file("/tmp/x.log"))
        #expect(throws: ConfigError.self) { try ConsoleSetting(parsing: "file:") }
        #expect(throws: ConfigError.self) { try ConsoleSetting(parsing: "tty") }
    }

    @Test func decodesJSONConfig() throws {
        let json = #"{"kernel": "k.elf", "memory": "512M", "cpus": 2, "pin": "0,1", "console": "none", "cmdline": "a=b"}"#
        let config = try VMConfig.decode(json: Array(json.utf8), source: "vm.json")
        #expect(config == VMConfig(kernel: "k.elf", cmdline: "a=b", memory: MemorySize(bytes: 512 << 20), cpus: 2,
                                   pin: try PinList(parsing: "0,1"), console: ConsoleSetting.none))
        let bytes = try VMConfig.decode(json: Array(#"{"kernel": "k", "memory": 8388608}"#.utf8), source: "x")
        #expect(bytes.memory.bytes == 8 << 20)
    }

    @Test func jsonErrorsNameTheSetting() {
        func message(_ json: String) -> String {
            do {
                _ = try VMConfig.decode(json: Array(json.utf8), source: "vm.json")
                return ""
            } catch {
                return error.description
            }
        }
        #expect(message(#"{"memory": "1G"}"#).contains("'kernel'"))
        #expect(message(#"{"kernel": "k", "cpu": 2}"#).contains("unknown setting 'cpu'"))
        #expect(message(#"{"kernel": "k", "cpus": "two"}"#).contains("cpus"))
        #expect(message(#"{"kernel": "k", "memory": "lots"}"#).contains("memory size 'lots'"))
        #expect(message("{not json").hasPrefix("vm.json: "))
    }

    @Test func validationCatchesCPUAndPinMismatch() throws {
        #expect(throws: ConfigError.self) { try VMConfig(kernel: "k", cpus: 0).validate() }
        #expect(throws: ConfigError.self) { try VMConfig(kernel: "k", cpus: 300).validate() }
        #expect(throws: ConfigError.self) { try VMConfig(kernel: "k", cpus: 2, pin: PinList(parsing: "0")).validate() }
        try VMConfig(kernel: "k", cpus: 2, pin: PinList(parsing: "0,1")).validate()
    }
}

@Suite struct CommandLineTests {
    @Test func defaultCommandLineWhenNoneIsGiven() {
        #expect(VMConfig(kernel: "k").effectiveCommandLine == VMConfig.defaultCommandLine)
        #expect(VMConfig(kernel: "k", cmdline: "quiet").effectiveCommandLine == "quiet")
    }

    @Test func addedParametersGoBeforeInitArguments() {
        #expect(VMConfig(kernel: "k", cmdline: "quiet").kernelCommandLine(adding: ["noxsave"]) == "quiet noxsave")
        #expect(VMConfig(kernel: "k", cmdline: "quiet -- uname -r").kernelCommandLine(adding: ["noxsave", "a=b"]) == "quiet noxsave a=b -- uname -r")
        #expect(VMConfig(kernel: "k", cmdline: "quiet -- a -- b").kernelCommandLine(adding: []) == "quiet -- a -- b")
    }
}

@Suite struct DiskSettingTests {
    @Test func parsesOptions() throws {
        #expect(try DiskSetting(parsing: "path=/d.qcow2") == DiskSetting(path: "/d.qcow2"))
        #expect(try DiskSetting(parsing: "path=d.img,readonly=on,format=raw,serial=abc")
                == DiskSetting(path: "d.img", readOnly: true, format: .raw, serial: "abc"))
        #expect(try DiskSetting(parsing: "format=qcow2,path=x").description == "path=x,format=qcow2")
        #expect(try DiskSetting(parsing: "path=x,cache=none") == DiskSetting(path: "x", cache: .none))
        #expect(try DiskSetting(parsing: "path=x,cache=writeback").description == "path=x")
        #expect(try DiskSetting(parsing: "path=x,cache=none").description == "path=x,cache=none")
    }

    @Test func refusesBadSpecs() {
        for bad in ["", "d.img", "path=", "path=a,readonly=yes", "path=a,format=vmdk", "path=a,bogus=1",
                    "path=a,serial=123456789012345678901", "readonly=on", "path=a,cache=directsync"] {
            #expect(throws: ConfigError.self) { try DiskSetting(parsing: bad) }
        }
    }
}

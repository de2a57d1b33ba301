import Testing
import VMM

@Suite struct ConfigFileTests {
    private func message(_ json: String, source: String = "vm.json") -> String {
        do {
            _ = try VMConfig.decode(json: Array(json.utf8), source: source)
            return ""
        } catch {
            return error.description
        }
    }

    @Test func relativePathsAreRelativeToTheFile() throws {
        let json = #"""
            {"kernel": "k.elf", "initrd": "../i.cpio", "console": "file:log/console.txt", "disks": ["path=d.qcow2"],
             "vsock": "cid=3,uds=v.sock", "api_socket": "/run/tern.sock"}
            """#
        let config = try VMConfig.decode(json: Array(json.utf8), source: "/srv/vms/web/vm.json")
        #expect(config.kernel == "/srv/vms/web/k.elf")
        #expect(config.initrd == "/srv/vms/web/../i.cpio")
        #expect(config.console == .file("/srv/vms/web/log/console.txt"))
        #expect(config.disks.map(\.path) == ["/srv/vms/web/d.qcow2"])
        #expect(config.vsock?.socketPath == "/srv/vms/web/v.sock")
        #expect(config.apiSocket == "/run/tern.sock")
    }

    @Test func balloonOnIsAcceptedAsOnTheCommandLine() throws {
        let config = try VMConfig.decode(json: Array(#"{"kernel": "k", "balloon": "on"}"#.utf8), source: "vm.json")
        #expect(config.balloon == (try BalloonSetting.parse("")))
    }

    @Test(arguments: [
        (#"{"kernel": "k", "memory": 2.5}"#, "vm.json: memory: 2.5 is not a whole number of bytes"),
        (#"{"kernel": "k", "memory": 1e30}"#, "vm.json: memory: 1e+30 bytes is too large"),
        (#"{"kernel": "k", "memory": 1024}"#, "vm.json: memory 1K: a guest needs at least 2 MiB"),
        (#"{"kernel": "k", "memory": "15T"}"#, "vm.json: memory 15T is more than this host's"),
        (#"{"kernel": "k", "cpus": 300}"#, "vm.json: cpus 300 is out of range"),
        (#"{"kernel": "k", "cpus": 2, "pin": "0"}"#, "vm.json: pin '0' has 1 entries for 2 vCPUs"),
        (#"{"kernel": "k", "memory": "lots"}"#, "vm.json: memory: memory size 'lots'"),
        (#"{"kernel": "k", "kernel": "j"}"#, "vm.json: kernel is given twice"),
        (#"{"kernel": "k", "disks": ["path=a,path=b"]}"#, "vm.json: disks: disk 'path=a,path=b': path is given twice"),
        (#"{"kernel": "k", "name": "two words"}"#, "vm.json: name 'two words' is not a name"),
    ])
    func errorsNameTheKey(json: String, expected: String) {
        let text = message(json)
        #expect(text.hasPrefix(expected), "\(text)")
        #expect(!text.contains("--"), "\(text)")
    }

    @Test func nestedKeysMayRepeatAcrossObjects() throws {
        let config = try VMConfig.decode(json: Array(#"{"kernel": "k", "disks": ["path=a", "path=b"], "name": "web-1"}"#.utf8),
                                         source: "vm.json")
        #expect(config.disks.map(\.path) == ["a", "b"])
        #expect(config.name == "web-1")
    }

    @Test func flagsAreNamedWhenTheSettingsCameFromFlags() {
        #expect(throws: ConfigError("--cpus 300 is out of range; give 1 to 255")) { try VMConfig(kernel: "k", cpus: 300).validate() }
        #expect(throws: ConfigError("disk 'path=a,path=b': path is given twice; give it once")) { try DiskSetting(parsing: "path=a,path=b") }
        #expect(throws: ConfigError("--memory 1024: a bare number is bytes; did you mean 1024M?")) {
            try MemorySize.checkBareNumber("1024", option: "--memory", minimum: VMConfig.minimumMemory)
        }
        #expect(throws: Never.self) { try MemorySize.checkBareNumber("1024K", option: "--memory", minimum: VMConfig.minimumMemory) }
    }
}

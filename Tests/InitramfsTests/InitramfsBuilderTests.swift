import Glibc
import Initramfs
import Testing

/// A synthetic kernel: a few virtio modules and ext4, with virtio_pci_legacy_dev missing as on older kernels.
let syntheticDep = """
    kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
    kernel/drivers/virtio/virtio_ring.ko:
    kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
    kernel/drivers/virtio/virtio_pci_modern_dev.ko:
    kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
    kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
    kernel/fs/jbd2/jbd2.ko:
    kernel/fs/mbcache.ko:
    kernel/lib/crc16.ko:
    kernel/sound/unused.ko:

    """

@Suite("initramfs builder")
struct InitramfsBuilderTests {
    struct Fixture {
        let dir = TempDirectory()
        let modules: String
        let busybox: String

        init(dep: String = syntheticDep, busybox: [UInt8] = fakeStaticELF()) throws {
            modules = try makeModulesDirectory(root: dir.file("lib/modules"), version: "6.1.0-99-test", dep: dep)
            self.busybox = dir.file("busybox")
            try writeBytes(busybox, to: self.busybox)
        }

        func options(output: String = "initrd.cpio", extra: [String] = []) -> InitramfsOptions {
            InitramfsOptions(output: dir.file(output), kernel: .directory(modules + "/"), busybox: busybox, extraModules: extra)
        }
    }

    @Test("builds the layout, writes it atomically and lists modules in dependency order")
    func build() throws {
        let fixture = try Fixture()
        let options = fixture.options()
        try writeText("old contents", to: options.output)
        let image = try InitramfsBuilder(options: options).build()
        #expect(image.kernelVersion == "6.1.0-99-test")
        #expect(image.modulesDirectory == fixture.modules)
        #expect(image.modules.map(\.name) == [
            "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk", "crc16", "mbcache", "jbd2", "ext4",
        ])
        #expect(image.skippedModules.contains("virtio_pci_legacy_dev"))
        #expect(!image.skippedModules.contains("ext4"))
        #expect(try readBytes(options.output) == image.archive.encoded())
        #expect(shell("ls '\(fixture.dir.path)' | grep -c tmp-").output == "0\n", "no temporary file is left behind")

        let paths = Set(image.archive.members.map(\.path))
        for path in [
            "init", "bin/busybox", "bin/sh", "bin/insmod", "bin/mount", "bin/dd", "bin/printf", "bin/poweroff",
            "dev/console", "dev/null", "proc", "sys", "tmp", "root", "etc",
            "lib/modules/6.1.0-99-test/kernel/drivers/block/virtio_blk.ko", "lib/modules/6.1.0-99-test/kernel/fs/ext4/ext4.ko",
        ] {
            #expect(paths.contains(path), "\(path)")
        }
        #expect(!paths.contains("lib/modules/6.1.0-99-test/kernel/sound/unused.ko"))
        let members = Dictionary(uniqueKeysWithValues: image.archive.members.map { ($0.path, $0.entry) })
        #expect(members["dev/console"] == .characterDevice(mode: 0o600, major: 5, minor: 1))
        #expect(members["dev/null"] == .characterDevice(mode: 0o666, major: 1, minor: 3))
        #expect(members["bin/sh"] == .symlink(target: "busybox"))
        #expect(members["init"] == .file(mode: 0o755, contents: Array(image.initScript.utf8)))
        #expect(members["lib/modules/6.1.0-99-test/kernel/lib/crc16.ko"]
            == .file(mode: 0o644, contents: Array("module kernel/lib/crc16.ko\n".utf8)))

        let order = scriptModules(image.initScript)
        #expect(order == image.modules.map(\.path))
        #expect(image.initScript.contains("moddir='/lib/modules/6.1.0-99-test'"))
        #expect(try InitramfsBuilder(options: options).assemble() == image, "builds are reproducible")
    }

    @Test("extra modules come with their dependencies; an unknown extra is only skipped")
    func extraModules() throws {
        let fixture = try Fixture()
        let image = try InitramfsBuilder(options: fixture.options(extra: ["unused", "no-such-module"])).assemble()
        #expect(image.modules.last?.name == "unused")
        #expect(image.skippedModules.last == "no-such-module")
    }

    @Test("busybox must exist and be a static x86-64 executable")
    func busyboxCheck() throws {
        for (bytes, reason) in [
            (fakeStaticELF(interpreter: true), "it is dynamically linked (it has an ELF interpreter)"),
            (Array("#!/bin/sh\n".utf8), "it is not an ELF executable"),
            (Array(fakeStaticELF().prefix(40)), "it is not an ELF executable"),
        ] {
            let fixture = try Fixture(busybox: bytes)
            #expect(throws: InitramfsError.busyboxUnusable(path: fixture.busybox, reason: reason)) {
                try InitramfsBuilder(options: fixture.options()).assemble()
            }
        }
        var arm = fakeStaticELF()
        arm[18] = 183
        let fixture = try Fixture(busybox: arm)
        #expect(throws: InitramfsError.busyboxUnusable(path: fixture.busybox, reason: "it is not an x86-64 program")) {
            try InitramfsBuilder(options: fixture.options()).assemble()
        }
        var options = fixture.options()
        options.busybox = fixture.dir.file("missing")
        do {
            _ = try InitramfsBuilder(options: options).assemble()
            Issue.record("built without busybox")
        } catch {
            #expect(error == .busyboxUnusable(path: options.busybox, reason: "it does not exist"))
            #expect(error.fix.contains("install busybox-static"))
        }
    }

    @Test("compressed modules are refused with a clear error")
    func compressed() throws {
        let fixture = try Fixture(dep: "kernel/drivers/virtio/virtio_ring.ko.zst:\nkernel/fs/ext4/ext4.ko:\n")
        #expect(throws: InitramfsError.compressedModule("\(fixture.modules)/kernel/drivers/virtio/virtio_ring.ko.zst")) {
            try InitramfsBuilder(options: fixture.options()).assemble()
        }
    }

    @Test("a failed write leaves no file behind")
    func failedWrite() throws {
        let fixture = try Fixture()
        let options = fixture.options(output: "missing-dir/initrd.cpio")
        #expect(throws: InitramfsError.io(path: options.output, operation: "create", errno: ENOENT)) {
            try InitramfsBuilder(options: options).build()
        }
    }

    @Test("versions compare by numeric runs", arguments: [
        ("6.1.0-9-amd64", "6.1.0-10-amd64"), ("5.10.0-30-amd64", "6.1.0-9-amd64"), ("6.1.0-10-amd64", "6.1.0-10-amd64+rt"),
        ("6.1", "6.1.0"), ("6.1.0-10-amd64", "6.1.0-10-cloud-amd64"),
    ])
    func versionOrder(older: String, newer: String) {
        #expect(InitramfsBuilder.versionPrecedes(older, newer))
        #expect(!InitramfsBuilder.versionPrecedes(newer, older))
        #expect(!InitramfsBuilder.versionPrecedes(older, older))
    }

    @Test("picks the newest kernel, or the one named; missing kernels are clear errors")
    func kernelSelection() throws {
        let dir = TempDirectory()
        let root = dir.file("modules")
        for version in ["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64", "6.1.0-10-amd64+rt"] {
            _ = try makeModulesDirectory(root: root, version: version, dep: "kernel/a.ko:\n")
        }
        makeDirectory("\(root)/7.0.0-no-modules-dep")
        #expect(InitramfsBuilder.installedKernels(in: root) == [
            "5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-10-amd64+rt",
        ])
        #expect(try InitramfsBuilder.modulesDirectory(.newest(in: root)) == ("\(root)/6.1.0-10-amd64+rt", "6.1.0-10-amd64+rt"))
        #expect(try InitramfsBuilder.modulesDirectory(.version("6.1.0-9-amd64", in: root)) == ("\(root)/6.1.0-9-amd64", "6.1.0-9-amd64"))
        #expect(throws: InitramfsError.kernelNotFound(
            version: "7.0.0-no-modules-dep", root: root,
            available: ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-10-amd64+rt"])
        ) { try InitramfsBuilder.modulesDirectory(.version("7.0.0-no-modules-dep", in: root)) }
        #expect(throws: InitramfsError.noKernelModules(root: dir.file("nothing"))) {
            try InitramfsBuilder.modulesDirectory(.newest(in: dir.file("nothing")))
        }
        #expect(throws: InitramfsError.missingModulesDep(directory: root)) {
            try InitramfsBuilder.modulesDirectory(.directory(root))
        }
    }
}

/// The module paths an /init script loads, in order.
func scriptModules(_ script: String) -> [String] {
    let lines = script.split(separator: "\n")
    guard let start = lines.firstIndex(where: { $0.hasPrefix("for module in") }) else { return [] }
    return lines[(start + 1)...].prefix { $0 != "do" }.map {
        String($0.drop { $0 == "\t" || $0 == "'" }.prefix { $0 != "'" })
    }
}

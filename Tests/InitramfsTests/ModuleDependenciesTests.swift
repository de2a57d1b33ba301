import Initramfs
import Testing

@Suite("modules.dep parsing and load order")
struct ModuleDependenciesTests {
    func names(_ selection: ModuleSelection) -> [String] { selection.loadOrder.map(\.name) }

    @Test("a diamond loads the shared dependency once, before both users")
    func diamond() throws {
        let graph = try ModuleDependencies(parsing: """
            kernel/top.ko: kernel/left.ko kernel/right.ko kernel/base.ko
            kernel/left.ko: kernel/base.ko
            kernel/right.ko: kernel/base.ko
            kernel/base.ko:
            kernel/unrelated.ko:
            """)
        #expect(graph.modules.count == 5)
        let selection = try graph.resolve(["top"])
        #expect(names(selection) == ["base", "left", "right", "top"])
        #expect(selection.skipped.isEmpty)
        #expect(names(try graph.resolve(["right", "top", "left"])) == ["base", "right", "left", "top"])
    }

    @Test("blank lines, comments, CRLF and tabs are tolerated")
    func tolerance() throws {
        let graph = try ModuleDependencies(parsing: "\n# comment\r\n  kernel/a.ko:\tkernel/b.ko  \r\n\n   \nkernel/b.ko:\n# end")
        #expect(graph.modules.map(\.path) == ["kernel/a.ko", "kernel/b.ko"])
        #expect(graph.modules[0].dependencies == ["kernel/b.ko"])
        #expect(names(try graph.resolve(["a"])) == ["b", "a"])
    }

    @Test("malformed lines are errors that name the line", arguments: [
        ("kernel/a.ko:\nkernel/b.ko kernel/a.ko\n", 2, "expected 'path: dependencies'"),
        ("kernel/a.ko:\n\n# c\nkernel/b.txt: kernel/a.ko\n", 4, "'kernel/b.txt' is not a .ko module file"),
        ("kernel/a.ko: kernel/b.ko: kernel/c.ko\n", 1, "'kernel/b.ko:' is not a .ko module file"),
        ("/lib/modules/6.1/kernel/a.ko:\n", 1, "'/lib/modules/6.1/kernel/a.ko' is not relative to the modules directory"),
        (": kernel/a.ko\n", 1, "empty module path"),
        ("kernel/a.ko:\nkernel/a.ko:\n", 2, "'kernel/a.ko' is listed twice"),
        ("kernel/a b.ko:\n", 1, "'kernel/a b.ko' contains a blank"),
    ])
    func malformed(text: String, line: Int, reason: String) throws {
        do {
            _ = try ModuleDependencies(parsing: text)
            Issue.record("parsed malformed input")
        } catch {
            guard case .malformedDependencyLine(let number, _, let why) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(number == line)
            #expect(why == reason)
            #expect(error.description.hasPrefix("modules.dep line \(line): "))
        }
    }

    @Test("a dependency without an entry of its own is an error")
    func missingDependency() throws {
        let graph = try ModuleDependencies(parsing: "kernel/a.ko: kernel/gone.ko\nkernel/b.ko:\n")
        #expect(throws: InitramfsError.missingDependency(module: "a", dependency: "kernel/gone.ko")) {
            try graph.resolve(["a"])
        }
        #expect(names(try graph.resolve(["b"])) == ["b"])
    }

    @Test("cycles are reported, not followed forever")
    func cycles() throws {
        let graph = try ModuleDependencies(parsing: """
            kernel/a.ko: kernel/b.ko
            kernel/b.ko: kernel/c.ko
            kernel/c.ko: kernel/a.ko
            kernel/self.ko: kernel/self.ko
            kernel/d.ko: kernel/b.ko
            """)
        #expect(throws: InitramfsError.dependencyCycle(["a", "b", "c", "a"])) { try graph.resolve(["a"]) }
        #expect(throws: InitramfsError.dependencyCycle(["b", "c", "a", "b"])) { try graph.resolve(["d"]) }
        #expect(throws: InitramfsError.dependencyCycle(["self", "self"])) { try graph.resolve(["self"]) }
        #expect(InitramfsError.dependencyCycle(["a", "b", "a"]).description.contains("a -> b -> a"))
    }

    @Test("names match with dashes or underscores and any suffix; absent names are skipped")
    func names() throws {
        let graph = try ModuleDependencies(parsing: """
            kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko
            kernel/drivers/virtio/virtio.ko:
            kernel/arch/x86/crypto/crc32c-intel.ko.zst:
            """)
        #expect(graph.module(named: "virtio_rng")?.path == "kernel/drivers/char/hw_random/virtio-rng.ko")
        #expect(graph.module(named: "virtio-rng")?.name == "virtio_rng")
        #expect(graph.module(named: "crc32c_intel.ko")?.isCompressed == true)
        #expect(graph.module(named: "virtio_pci") == nil)
        let selection = try graph.resolve(["virtio_pci_legacy_dev", "virtio-rng"])
        #expect(names(selection) == ["virtio", "virtio_rng"])
        #expect(selection.skipped == ["virtio_pci_legacy_dev"])
        #expect(throws: InitramfsError.noModulesResolved(["nope", "virtio_pci"])) {
            try graph.resolve(["nope", "virtio_pci"])
        }
        #expect(throws: InitramfsError.noModulesResolved([])) { try graph.resolve([]) }
    }

    @Test("canonical names", arguments: [
        ("virtio_pci", "virtio_pci"), ("virtio-pci", "virtio_pci"), ("crc32c-intel.ko", "crc32c_intel"),
        ("kernel/fs/ext4/ext4.ko.xz", "ext4"), ("kernel/lib/crc16.ko.zst", "crc16"),
    ])
    func canonical(input: String, expected: String) {
        #expect(ModuleDependencies.canonicalName(input) == expected)
    }
}

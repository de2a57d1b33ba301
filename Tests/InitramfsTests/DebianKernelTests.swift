import Glibc
import Initramfs
import Testing

/// Builds against the installed Debian kernel and busybox-static. These fail, naming the package to install,
/// when either is missing: CI installs linux-image-amd64, busybox-static and cpio.
@Suite("initramfs for the installed Debian kernel")
struct DebianKernelTests {
    @Test("the archive holds init, busybox, virtio and ext4, loaded in dependency order")
    func debianKernel() throws {
        guard let (modules, busybox) = installedKernelAndBusybox() else { return }
        let dir = TempDirectory()
        let options = InitramfsOptions(output: dir.file("initrd.cpio"), kernel: .directory(modules), busybox: busybox)
        let image = try InitramfsBuilder(options: options).build()

        let listing = shell("cpio -t --quiet < '\(options.output)'")
        #expect(listing.status == 0, "\(listing.output)")
        let names = listing.output.split(separator: "\n").map(String.init)
        let version = image.kernelVersion
        for wanted in ["init", "bin/busybox", "bin/sh", "dev/console", "dev/null"] {
            #expect(names.contains(wanted), "\(wanted) is not in the archive")
        }
        for module in ["virtio_blk.ko", "virtio_pci.ko", "virtio_net.ko", "virtio_console.ko", "ext4.ko", "jbd2.ko", "virtio-rng.ko"] {
            #expect(names.contains { $0.hasPrefix("lib/modules/\(version)/kernel/") && $0.hasSuffix("/\(module)") }, "\(module)")
        }

        let graph = try ModuleDependencies(directory: modules)
        let order = scriptModules(image.initScript)
        #expect(order == image.modules.map(\.path))
        for (position, path) in order.enumerated() {
            let module = try #require(graph.modules.first { $0.path == path })
            for dependency in module.dependencies {
                let at = order.firstIndex(of: dependency)
                #expect(at != nil && at! < position, "\(dependency) must load before \(path)")
            }
        }
        func position(_ name: String) -> Int? { image.modules.firstIndex { $0.name == name } }
        #expect(position("virtio_ring")! < position("virtio")!)
        #expect(position("virtio")! < position("virtio_blk")!)
        #expect(position("virtio")! < position("virtio_pci")!)
        #expect(position("failover")! < position("net_failover")!)
        #expect(position("jbd2")! < position("ext4")!)
        #expect(position("crc32c_generic") != nil)
    }

    @Test("/init passes busybox sh -n, and busybox has every linked applet")
    func initSyntax() throws {
        guard let (modules, busybox) = installedKernelAndBusybox() else { return }
        let dir = TempDirectory()
        let options = InitramfsOptions(output: dir.file("initrd.cpio"), kernel: .directory(modules), busybox: busybox)
        let image = try InitramfsBuilder(options: options).assemble()
        try writeText(image.initScript, to: dir.file("init"))
        let check = shell("'\(busybox)' sh -n '\(dir.file("init"))'")
        #expect(check.status == 0, "\(check.output)")
        let quoting = InitScript.render(kernelVersion: "6.1 'odd'", modulePaths: ["kernel/it's.ko"])
        try writeText(quoting, to: dir.file("odd"))
        #expect(shell("'\(busybox)' sh -n '\(dir.file("odd"))'").status == 0)

        let applets = Set(shell("'\(busybox)' --list").output.split(separator: "\n").map(String.init))
        for applet in InitramfsBuilder.applets {
            #expect(applets.contains(applet), "busybox lacks \(applet)")
        }
    }

    @Test("the status line of /init writes the exit status byte at offset 0x501", arguments: [0, 1, 7, 200, 255])
    func statusByte(status: Int) throws {
        guard let (_, busybox) = installedKernelAndBusybox() else { return }
        let script = InitScript.render(kernelVersion: "6.1.0-1-amd64", modulePaths: ["kernel/a.ko"])
        let line = try #require(script.split(separator: "\n").first { $0.contains("of=/dev/port") })
        let dir = TempDirectory()
        let port = dir.file("port")
        let command = "status=\(status)\n" + line.replacingOccurrences(of: "/dev/port", with: port) + "\n"
        try writeText(command, to: dir.file("snippet"))
        let run = shell("'\(busybox)' sh '\(dir.file("snippet"))'")
        #expect(run.status == 0, "\(run.output)")
        let bytes = try readBytes(port)
        #expect(bytes.count == 0x501 + 1)
        #expect(bytes.last == UInt8(status))
    }
}

extension Substring {
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}

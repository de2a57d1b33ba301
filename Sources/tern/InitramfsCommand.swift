import ArgumentParser
import Initramfs
import Qcow2
#if canImport(Glibc)
import Glibc
#endif

/// `tern initramfs`: build initramfs images for stock kernels.
struct InitramfsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "initramfs",
        abstract: "Build initramfs images that boot a stock Linux kernel and run one command.",
        subcommands: [InitramfsCreate.self])
}

/// `tern initramfs create`: busybox, a kernel's virtio and ext4 modules, and an /init that runs one command.
struct InitramfsCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Build an initramfs from busybox-static and a kernel's virtio and ext4 modules.",
        discussion: """
            /init loads the modules, prints 'tern-init: ...' lines on the console, runs the words after ' -- ' \
            on the kernel command line as one command (a shell when there are none), prints \
            'tern-init: exit status N' and writes N to I/O port 0x501, so 'tern run' exits with N. \
            Example: tern run --kernel /boot/vmlinuz-VERSION --initrd FILE --cmdline 'console=ttyS0 -- uname -a'
            """)

    @Option(name: .long, help: ArgumentHelp(
        "The initramfs to write: a new file is renamed into place; an existing hard-linked file, link target or device is written in place.",
        valueName: "file"))
    var output: String

    @Option(name: .long, help: ArgumentHelp("Kernel version under /lib/modules (default: the newest).", valueName: "version"))
    var kernelVersion: String?

    @Option(name: .long, help: ArgumentHelp("A modules directory, /lib/modules/VERSION or a copy of one.", valueName: "dir"))
    var modules: String?

    @Option(name: .long, help: ArgumentHelp("A static busybox.", valueName: "path"))
    var busybox: String = "/bin/busybox"

    @Option(name: .customLong("module"), help: ArgumentHelp("Another module to include with its dependencies (repeatable).", valueName: "name"))
    var extraModules: [String] = []

    func validate() throws {
        if kernelVersion != nil && modules != nil {
            throw ValidationError("--kernel-version and --modules are mutually exclusive")
        }
    }

    func run() {
        let kernel: KernelModulesSource =
            if let modules { .directory(modules) } else if let kernelVersion { .version(kernelVersion) } else { .newest() }
        let options = InitramfsOptions(output: output, kernel: kernel, busybox: busybox, extraModules: extraModules)
        let image: InitramfsImage
        do throws(InitramfsError) {
            image = try InitramfsBuilder(options: options).assemble()
        } catch {
            fail("\(error); \(error.fix)")
        }
        do throws(DiskError) {
            try writeOutput(output, contents: image.archive.encoded())
        } catch {
            fail("\(output): \(error); give a regular file, a link to one or a large enough device")
        }
        for name in image.skippedModules {
            printToStandardError("tern: note: kernel \(image.kernelVersion) has no module \(name); skipped it")
        }
        print("""
            wrote \(output): kernel \(image.kernelVersion), \(image.modules.count) modules, \
            \(image.archive.encodedSize) bytes
            """)
    }
}

private func printToStandardError(_ message: String) {
    var line = message + "\n"
    line.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

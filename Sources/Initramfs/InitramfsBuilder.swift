#if canImport(Glibc)
import Glibc
#endif

/// Where the kernel's modules come from.
public enum KernelModulesSource: Sendable, Equatable {
    /// The newest kernel version under `root`.
    case newest(in: String = "/lib/modules")
    /// `root/version`.
    case version(String, in: String = "/lib/modules")
    /// A modules directory (`/lib/modules/VERSION`); its last path component is the kernel version.
    case directory(String)
}

/// What to build.
public struct InitramfsOptions: Sendable, Equatable {
    /// The archive to write; replaced atomically.
    public var output: String
    /// Which kernel's modules to include.
    public var kernel: KernelModulesSource
    /// A static x86-64 busybox.
    public var busybox: String
    /// Modules to add to `InitramfsBuilder.defaultModules`.
    public var extraModules: [String]

    public init(
        output: String, kernel: KernelModulesSource = .newest(), busybox: String = "/bin/busybox",
        extraModules: [String] = []
    ) {
        self.output = output
        self.kernel = kernel
        self.busybox = busybox
        self.extraModules = extraModules
    }
}

/// An assembled initramfs and what went into it.
public struct InitramfsImage: Sendable, Equatable {
    /// The version the modules are installed under (/lib/modules/VERSION in the image).
    public let kernelVersion: String
    /// The modules directory the modules came from.
    public let modulesDirectory: String
    /// The modules /init loads, in that order.
    public let modules: [KernelModule]
    /// Requested modules this kernel does not have.
    public let skippedModules: [String]
    /// The text of /init.
    public let initScript: String
    /// Every member of the image, as written.
    public let archive: CPIOArchive
}

/// Builds an uncompressed newc initramfs: busybox, the virtio and ext4 modules of one kernel, and an /init that
/// runs the command given after ` -- ` on the kernel command line (see `InitScript`).
///
/// Compressed modules (.ko.xz, .ko.zst) are refused with `InitramfsError.compressedModule`; Debian's 6.1
/// kernels ship plain .ko files.
public struct InitramfsBuilder: Sendable {
    /// The virtio transports and devices, vsock, and ext4 with its checksum helpers. Names a kernel lacks are skipped.
    public static let defaultModules = [
        "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_mmio",
        "virtio_blk", "failover", "net_failover", "virtio_net", "virtio_console", "virtio_rng", "virtio_balloon",
        "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
        "crc16", "crc32c_generic", "crc32c_intel", "libcrc32c", "mbcache", "jbd2", "ext4",
    ]

    /// The busybox applets linked into /bin.
    public static let applets = [
        "[", "ash", "awk", "blockdev", "cat", "chmod", "chown", "cp", "cttyhack", "cut", "date", "dd", "df",
        "dmesg", "echo", "env", "false", "find", "free", "grep", "halt", "head", "hexdump", "hostname", "id",
        "ifconfig", "insmod", "ip", "kill", "ln", "ls", "lsmod", "mkdir", "mknod", "mount", "mv", "nproc", "od",
        "poweroff", "printf", "ps", "pwd", "readlink", "reboot", "rm", "rmdir", "rmmod", "sed", "seq", "setsid",
        "sh", "sleep", "sort", "stat", "stty", "sync", "sysctl", "tail", "tee", "test", "time", "timeout", "touch", "tr",
        "true", "umount", "uname", "uniq", "uptime", "vi", "wc", "xargs",
    ]

    public let options: InitramfsOptions

    public init(options: InitramfsOptions) {
        self.options = options
    }

    /// Assembles the archive in memory and writes it to `options.output` atomically.
    @discardableResult
    public func build() throws(InitramfsError) -> InitramfsImage {
        let image = try assemble()
        try FileIO.writeAtomically(image.archive.encoded(), to: options.output)
        return image
    }

    /// Assembles the archive in memory without writing anything.
    public func assemble() throws(InitramfsError) -> InitramfsImage {
        let (directory, version) = try Self.modulesDirectory(options.kernel)
        let busybox = try Self.readStaticBusybox(options.busybox)
        let graph = try ModuleDependencies(directory: directory)
        let selection = try graph.resolve(Self.defaultModules + options.extraModules)
        if let compressed = selection.loadOrder.first(where: \.isCompressed) {
            throw .compressedModule("\(directory)/\(compressed.path)")
        }
        let script = InitScript.render(kernelVersion: version, modulePaths: selection.loadOrder.map(\.path))

        var archive = CPIOArchive()
        for name in ["bin", "dev", "etc", "proc", "sys", "usr", "lib/modules/\(version)"] {
            try archive.add(name, .directory(mode: 0o755))
        }
        try archive.add("root", .directory(mode: 0o700))
        try archive.add("tmp", .directory(mode: 0o1777))
        try archive.add("dev/console", .characterDevice(mode: 0o600, major: 5, minor: 1))
        try archive.add("dev/null", .characterDevice(mode: 0o666, major: 1, minor: 3))
        try archive.add("dev/port", .characterDevice(mode: 0o600, major: 1, minor: 4))
        try archive.add("sbin", .symlink(target: "bin"))
        try archive.add("usr/bin", .symlink(target: "../bin"))
        try archive.add("usr/sbin", .symlink(target: "../bin"))
        try archive.add("bin/busybox", .file(mode: 0o755, contents: busybox))
        for applet in Self.applets {
            try archive.add("bin/\(applet)", .symlink(target: "busybox"))
        }
        for module in selection.loadOrder {
            let contents = try FileIO.read("\(directory)/\(module.path)")
            try archive.add("lib/modules/\(version)/\(module.path)", .file(mode: 0o644, contents: contents))
        }
        try archive.add("init", .file(mode: 0o755, contents: Array(script.utf8)))
        return InitramfsImage(
            kernelVersion: version, modulesDirectory: directory, modules: selection.loadOrder,
            skippedModules: selection.skipped, initScript: script, archive: archive)
    }

    /// The modules directory and kernel version `source` names.
    public static func modulesDirectory(_ source: KernelModulesSource) throws(InitramfsError) -> (
        directory: String, version: String
    ) {
        switch source {
        case .directory(let path):
            var directory = path
            while directory.count > 1 && directory.hasSuffix("/") { directory.removeLast() }
            guard FileIO.exists("\(directory)/modules.dep") else { throw .missingModulesDep(directory: directory) }
            let version = directory.split(separator: "/").last.map(String.init) ?? directory
            return (directory, version)
        case .version(let version, let root):
            guard FileIO.exists("\(root)/\(version)/modules.dep") else {
                throw .kernelNotFound(version: version, root: root, available: installedKernels(in: root))
            }
            return ("\(root)/\(version)", version)
        case .newest(let root):
            guard let version = installedKernels(in: root).last else { throw .noKernelModules(root: root) }
            return ("\(root)/\(version)", version)
        }
    }

    /// Kernel versions under `root` that have a modules.dep, oldest first.
    public static func installedKernels(in root: String) -> [String] {
        let names = (try? FileIO.subdirectories(of: root)) ?? []
        return names.filter { FileIO.exists("\(root)/\($0)/modules.dep") }.sorted(by: versionPrecedes)
    }

    /// Orders versions by their numeric and text runs: "6.1.0-9-amd64" precedes "6.1.0-10-amd64".
    public static func versionPrecedes(_ a: String, _ b: String) -> Bool {
        func runs(_ s: String) -> [Substring] {
            var result: [Substring] = []
            var start = s.startIndex
            for i in s.indices.dropFirst() where s[i].isNumber != s[s.index(before: i)].isNumber {
                result.append(s[start..<i])
                start = i
            }
            if start < s.endIndex { result.append(s[start...]) }
            return result
        }
        for (x, y) in zip(runs(a), runs(b)) where x != y {
            if let m = Int(x), let n = Int(y), m != n { return m < n }
            return x < y
        }
        return runs(a).count < runs(b).count
    }

    /// The bytes of `path` after checking it is a static x86-64 ELF executable (no PT_INTERP).
    static func readStaticBusybox(_ path: String) throws(InitramfsError) -> [UInt8] {
        func unusable(_ reason: String) -> InitramfsError { .busyboxUnusable(path: path, reason: reason) }
        let bytes: [UInt8]
        do {
            bytes = try FileIO.read(path)
        } catch {
            if case .io(_, _, let code) = error, code == ENOENT { throw unusable("it does not exist") }
            throw error
        }
        func field(_ offset: Int, _ size: Int) -> Int {
            (0..<size).reduce(0) { $0 | Int(bytes[offset + $1]) << (8 * $1) }
        }
        guard bytes.count >= 64, bytes[0..<4].elementsEqual([0x7F, 0x45, 0x4C, 0x46]) else {
            throw unusable("it is not an ELF executable")
        }
        guard bytes[4] == 2, bytes[5] == 1, field(18, 2) == 62 else { throw unusable("it is not an x86-64 program") }
        guard field(16, 2) == 2 || field(16, 2) == 3 else { throw unusable("it is not an executable") }
        let (programHeaders, entrySize, count) = (field(32, 8), field(54, 2), field(56, 2))
        guard count == 0
            || (entrySize >= 4 && programHeaders >= 0 && programHeaders <= bytes.count && count <= (bytes.count - programHeaders) / entrySize)
        else {
            throw unusable("its program headers are truncated")
        }
        for index in 0..<count where field(programHeaders + index * entrySize, 4) == 3 {
            throw unusable("it is dynamically linked (it has an ELF interpreter)")
        }
        return bytes
    }
}

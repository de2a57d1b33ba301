import ArgumentParser
import BootLoader
import Glibc
import Initramfs
import Logging
import VMM

/// `tern exec`: one command in a fresh microVM, isolated by a stock Linux kernel.
struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one command in a fresh microVM and exit with its status.",
        discussion: """
            Boots a stock Linux kernel (by default the newest /boot/vmlinuz-*) with an initramfs built by \
            'tern initramfs create' (cached under ~/.cache/tern), runs the command, streams its output and \
            exits with its status. The kernel passes the command to init as words: arguments cannot contain \
            spaces or quotes.
            """)

    @Option(help: ArgumentHelp("The kernel (default: the newest /boot/vmlinuz-*).", valueName: "file"))
    var kernel: String?

    @Option(help: ArgumentHelp("An initramfs to use instead of building one for the kernel.", valueName: "file"))
    var initrd: String?

    @Option(help: ArgumentHelp("Guest RAM (default 512M).", valueName: "size"))
    var memory: String = "512M"

    @Option(help: ArgumentHelp("Number of vCPUs (default 1).", valueName: "n"))
    var cpus: Int = 1

    @Option(help: ArgumentHelp("Extra kernel parameters.", valueName: "string"))
    var append: String?

    @OptionGroup var logging: LoggingOptions

    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    func run() {
        logging.bootstrap()
        let signals = SignalHandling(logger: Logger(label: "tern"))
        let settings: VMConfig
        do {
            settings = try configure()
            try settings.validate()
        } catch {
            fail(error.description, status: 2)
        }
        bootAndRun(settings, forwardInput: false, signals: signals)
    }

    func configure() throws(ConfigError) -> VMConfig {
        guard !command.isEmpty else { throw ConfigError("no command given; write it after --, like: tern exec -- uname -r") }
        for word in command where word.isEmpty || word.contains(where: { $0 == " " || $0 == "\t" || $0 == "\"" || $0 == "\n" }) {
            throw ConfigError("argument '\(word)' is empty or contains whitespace or quotes, which the kernel command line cannot carry to init")
        }
        let kernelPath: String
        if let kernel { kernelPath = kernel } else { kernelPath = try Self.newestKernel() }
        let initrdPath: String
        if let initrd { initrdPath = initrd } else { initrdPath = try Self.cachedInitramfs(for: kernelPath) }
        let parameters = "console=ttyS0 reboot=t panic=-1 quiet" + (append.map { " " + $0 } ?? "")
        return VMConfig(kernel: kernelPath, initrd: initrdPath, cmdline: parameters + " -- " + command.joined(separator: " "),
                        memory: try MemorySize(parsing: memory), cpus: cpus)
    }

    /// The newest kernel under /boot.
    static func newestKernel() throws(ConfigError) -> String {
        let kernels = directoryEntries("/boot").filter { $0.hasPrefix("vmlinuz-") }.map { String($0.dropFirst(8)) }
        guard let newest = kernels.sorted(by: InitramfsBuilder.versionPrecedes).last else {
            throw ConfigError("no kernel under /boot; install one (apt-get install linux-image-amd64) or pass --kernel")
        }
        return "/boot/vmlinuz-\(newest)"
    }

    /// An initramfs for `kernelPath`'s modules, built on first use and kept in the cache.
    static func cachedInitramfs(for kernelPath: String) throws(ConfigError) -> String {
        let release = kernelRelease(kernelPath)
        guard let release else {
            throw ConfigError("\(kernelPath): cannot tell its kernel release to find its modules; pass --initrd")
        }
        let cache = (getenv("XDG_CACHE_HOME").map { String(cString: $0) } ?? ((getenv("HOME").map { String(cString: $0) } ?? "/tmp") + "/.cache")) + "/tern"
        let path = "\(cache)/initramfs-\(release).cpio"
        let modulesDep = "/lib/modules/\(release)/modules.dep"
        if modificationTime(path) > 0 && modificationTime(path) >= modificationTime(modulesDep) { return path }
        makeDirectories(cache)
        do {
            try InitramfsBuilder(options: InitramfsOptions(output: path, kernel: .version(release))).build()
        } catch {
            throw ConfigError("building the initramfs for \(release): \(error)")
        }
        return path
    }

    /// The kernel release from a /boot/vmlinuz-RELEASE name, or from the bzImage itself.
    static func kernelRelease(_ path: String) -> String? {
        let name = path.split(separator: "/").last.map(String.init) ?? path
        if name.hasPrefix("vmlinuz-"), modificationTime("/lib/modules/\(name.dropFirst(8))/modules.dep") > 0 {
            return String(name.dropFirst(8))
        }
        guard let file = try? MappedFile(path: path) else { return nil }
        return SetupHeader.kernelRelease(file.bytes)
    }

    static func directoryEntries(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    static func modificationTime(_ path: String) -> Int {
        var status = stat()
        return stat(path, &status) == 0 ? status.st_mtim.tv_sec : 0
    }

    static func makeDirectories(_ path: String) {
        var prefix = ""
        for component in path.split(separator: "/") {
            prefix += "/" + component
            mkdir(prefix, 0o755)
        }
    }
}

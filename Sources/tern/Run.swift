import ArgumentParser
import BootLoader
import Glibc
import Logging
import VMM

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a VM and run it until it stops.",
        discussion: """
            The guest's serial console (COM1) is connected to this terminal; press Ctrl-A x to quit.
            A guest ends the VM by writing a byte to I/O port 0x501 (tern exits with that byte as its status),
            by resetting through the i8042 (exit status 0) or by powering off (exit status 0).
            A guest that crashes (triple fault, an instruction KVM cannot emulate) gets a report on stderr and exit status 1;
            a VM stopped by SIGINT, SIGTERM, SIGHUP, the console escape or `tern control stop` exits with 130 after its
            disks are flushed and its control socket removed. SIGUSR1, SIGUSR2, SIGALRM and SIGPIPE are ignored.
            """)

    @Option(help: ArgumentHelp("Read the VM's settings from a JSON file (keys: name, kernel, initrd, cmdline, memory, cpus, pin, vmm_pin, console, kvm_device, mergeable, huge_pages, ...; relative paths are relative to the file). Other flags override it.", valueName: "file"))
    var config: String?

    @Option(help: ArgumentHelp("A name for the VM, shown in log lines and by `tern control status`.", valueName: "name"))
    var name: String?

    @Option(help: ArgumentHelp("The guest kernel: an ELF64 image, booted through PVH when it has the PVH note.", valueName: "file"))
    var kernel: String?

    @Option(help: ArgumentHelp("Start from firmware at the reset vector instead of a kernel: seabios (Debian's SeaBIOS) or an image file, optionally with ,log=FILE for the firmware's debug output.", valueName: "image"))
    var firmware: String?

    @Option(help: ArgumentHelp("An initial ramdisk to pass to the kernel.", valueName: "file"))
    var initrd: String?

    @Option(help: ArgumentHelp("The kernel command line.", valueName: "string"))
    var cmdline: String?

    @Option(help: ArgumentHelp("Guest RAM, with a K, M, G or T suffix (default 256M); a bare number is bytes.", valueName: "size"))
    var memory: String?

    @Option(help: ArgumentHelp("Number of vCPUs (default 1).", valueName: "n"))
    var cpus: Int?

    @Option(help: ArgumentHelp("Host cores for each vCPU, one entry per vCPU: 0,1 pins vCPU 0 to core 0 and vCPU 1 to core 1; an entry may be a range or a '+'-joined set (0-1,2+3).", valueName: "list"))
    var pin: String?

    @Option(name: .customLong("vmm-pin"), help: ArgumentHelp("Host cores for the VMM's own threads (console, main), e.g. 2 or 2-3.", valueName: "cpus"))
    var vmmPin: String?

    @Option(help: ArgumentHelp("Where the serial console goes: stdio, none or file:PATH (default stdio).", valueName: "target"))
    var console: String?

    @Option(name: .customLong("kvm-device"), help: ArgumentHelp("Path of the KVM device (default /dev/kvm).", valueName: "path"))
    var kvmDevice: String?

    @Option(name: .customLong("kernel-decompression"), help: ArgumentHelp("For a bzImage: 'host' (default) unpacks the kernel here and boots it through PVH, skipping the guest's own decompressor; 'guest' boots the bzImage as is.", valueName: "where"))
    var kernelDecompression: String?

    @Option(help: ArgumentHelp("A disk for the guest, virtio-blk unless interface=ahci: path=FILE[,readonly=on][,format=raw|qcow2][,serial=ID][,cache=writeback|none][,interface=virtio|ahci][,media=disk|cdrom]. Repeatable.", valueName: "spec"))
    var disk: [String] = []

    @Option(help: ArgumentHelp("With --firmware: the drive kinds to boot first, in order, as order=cdrom,disk (default: the drives' order on the command line).", valueName: "order=KINDS"))
    var boot: String?

    @Option(help: ArgumentHelp("A CD-ROM image for the guest (read-only ATAPI on the AHCI controller); the same as --disk path=FILE,interface=ahci,media=cdrom. Repeatable.", valueName: "iso"))
    var cdrom: [String] = []

    @Option(help: ArgumentHelp("A network interface as virtio-net: user[,hostfwd=tcp::2222-:22]...[,mac=MAC] (NAT through libslirp, no root needed) or tap=NAME[,mac=MAC]. Repeatable.", valueName: "spec"))
    var net: [String] = []

    @Option(help: ArgumentHelp("A virtio-vsock device: cid=N,uds=PATH. The host connects to PATH and sends \"CONNECT <port>\\n\"; the guest's connections to host port P go to PATH_P (Firecracker's scheme).", valueName: "spec"))
    var vsock: String?

    @Option(help: ArgumentHelp("A virtio-balloon device: on, or [target=SIZE][,deflate-on-oom=on][,stats-interval=SECONDS][,free-page-reporting=on]. Resize it with `tern control`.", valueName: "spec"))
    var balloon: String?

    @Flag(name: .customLong("virtio-console"), help: "Give the guest a virtio-console (hvc0) on the console target; host input then goes to it instead of COM1.")
    var virtioConsole = false

    @Flag(help: "Give the guest a virtio-rng device fed from the host's getrandom.")
    var rng = false

    @Option(name: .customLong("virtio-transport"), help: ArgumentHelp("How VirtIO devices reach the guest: 'pci' (default: virtio-pci with MSI-X behind a PCI host bridge) or 'mmio' (virtio-mmio windows).", valueName: "kind"))
    var virtioTransport: String?

    @Option(name: .customLong("api-socket"), help: ArgumentHelp("Serve the VM's controls (status, stop, pause, resume, balloon) on this Unix socket (mode 0600); see `tern control`.", valueName: "path"))
    var apiSocket: String?

    @Flag(help: "Let KSM merge identical guest pages (anonymous private RAM with MADV_MERGEABLE).")
    var mergeable = false

    @Flag(name: .customLong("huge-pages"), help: "Back guest RAM with transparent huge pages (MADV_HUGEPAGE).")
    var hugePages = false

    @OptionGroup var logging: LoggingOptions

    func run() {
        logging.bootstrap()
        let signals = SignalHandling(logger: Logger(label: "tern"))
        let settings: VMConfig
        do {
            settings = try resolveConfig()
            try settings.validate()
        } catch {
            fail(error.description, status: 2)
        }
        bootAndRun(settings, forwardInput: true, signals: signals)
    }

    /// Merges the JSON file (if any) with the flags; flags win.
    func resolveConfig() throws(ConfigError) -> VMConfig {
        var settings: VMConfig
        if let config {
            settings = try VMConfig.decode(json: try readFile(config), source: config)
        } else {
            guard kernel != nil || firmware != nil else {
                throw ConfigError("no kernel given; pass --kernel FILE, --firmware seabios or --config FILE")
            }
            settings = VMConfig(kernel: kernel)
        }
        if let kernel { settings.kernel = kernel }
        if let firmware { settings.firmware = try FirmwareSetting(parsing: firmware) }
        if let boot {
            guard boot.hasPrefix("order="), settings.firmware != nil else {
                throw ConfigError("--boot takes order=KIND,KIND (disk, cdrom) and needs --firmware")
            }
            settings.firmware?.bootOrder = try FirmwareSetting.parseBootOrder(boot.dropFirst(6), separator: ",")
        }
        if let initrd { settings.initrd = initrd }
        if let cmdline { settings.cmdline = cmdline }
        if let memory {
            try MemorySize.checkBareNumber(memory, option: "--memory", minimum: VMConfig.minimumMemory)
            settings.memory = try MemorySize(parsing: memory)
        }
        if let cpus { settings.cpus = cpus }
        if let pin { settings.pin = try PinList(parsing: pin) }
        if let vmmPin { settings.vmmPin = try CPUSet(parsing: vmmPin) }
        if let console { settings.console = try ConsoleSetting(parsing: console) }
        if let kvmDevice { settings.kvmDevice = kvmDevice }
        if let kernelDecompression {
            guard let value = KernelDecompression(rawValue: kernelDecompression) else {
                throw ConfigError("--kernel-decompression '\(kernelDecompression)' is not valid; use host or guest")
            }
            settings.kernelDecompression = value
        }
        if let virtioTransport {
            guard let value = VirtioTransportKind(rawValue: virtioTransport) else {
                throw ConfigError("--virtio-transport '\(virtioTransport)' is not valid; use pci or mmio")
            }
            settings.virtioTransport = value
        }
        if let apiSocket { settings.apiSocket = apiSocket }
        if mergeable { settings.mergeable = true }
        if rng { settings.rng = true }
        if virtioConsole { settings.virtioConsole = true }
        for spec in disk { settings.disks.append(try DiskSetting(parsing: spec)) }
        for path in cdrom { settings.disks.append(DiskSetting(path: path, interface: .ahci, media: .cdrom)) }
        for spec in net { settings.nets.append(try NetSetting.parse(spec)) }
        if let vsock { settings.vsock = try VsockSetting.parse(vsock) }
        if let balloon { settings.balloon = try BalloonSetting.parse(balloon) }
        if let name { settings.name = name }
        if hugePages { settings.hugePages = true }
        return settings
    }

    /// Reads a config file: a regular file of at most 1 MiB. O_NONBLOCK keeps a FIFO from hanging the open.
    func readFile(_ path: String) throws(ConfigError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw ConfigError("\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw ConfigError("--config \(path): \(String(cString: strerror(errno)))") }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw ConfigError("--config \(path): \(HostFiles.describe(status.st_mode & S_IFMT)), not a regular file; give a JSON file")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count < 0 {
                if errno == EINTR { continue }
                throw ConfigError("\(path): \(String(cString: strerror(errno)))")
            }
            if count == 0 { return bytes }
            bytes.append(contentsOf: chunk[0..<count])
            guard bytes.count <= 1 << 20 else { throw ConfigError("\(path): larger than 1 MiB; is this a VM config?") }
        }
    }
}

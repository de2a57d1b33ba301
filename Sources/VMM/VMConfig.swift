import BootLoader
import FoundationEssentials
import Glibc
import GuestMemory

/// How VirtIO devices reach the guest.
public enum VirtioTransportKind: String, Codable, Sendable, CaseIterable {
    /// virtio-pci (modern) behind a PCI host bridge with ECAM and MSI-X: what Linux and firmware expect.
    case pci
    /// virtio-mmio (version 2) windows described in the DSDT and on the command line: no PCI enumeration.
    case mmio
}

/// How errors name a setting: by its `tern run` flag (`--memory`) or by its key in a config file (`memory`).
public enum SettingNames: Sendable {
    case flags, keys

    func name(_ key: VMConfig.CodingKeys) -> String {
        switch self {
        case .flags: "--" + key.rawValue.replacing("_", with: "-")
        case .keys: key.rawValue
        }
    }
}

/// Everything needed to start a VM. `tern run` builds it from flags or from JSON (the schema the API uses).
public struct VMConfig: Equatable, Sendable, Codable {
    /// The VM's name, shown in log lines and by the control socket's `status`.
    public var name: String?
    /// Guest kernel: an ELF64 image, booted through PVH when it carries the PVH note. Nil with `firmware`.
    public var kernel: String?
    /// Firmware to start the guest from, at the reset vector, instead of a kernel.
    public var firmware: FirmwareSetting?
    /// Optional initial ramdisk.
    public var initrd: String?
    /// Kernel command line; empty means `defaultCommandLine`.
    public var cmdline: String
    public var memory: MemorySize
    public var cpus: Int
    /// Host cores for each vCPU.
    public var pin: PinList?
    /// Host cores for the VMM's other threads.
    public var vmmPin: CPUSet?
    public var console: ConsoleSetting
    /// Path of the KVM device.
    public var kvmDevice: String
    /// Let KSM merge identical guest pages.
    public var mergeable: Bool
    /// Back guest RAM with transparent huge pages.
    public var hugePages: Bool
    /// Where a bzImage's kernel is decompressed.
    public var kernelDecompression: KernelDecompression
    /// Give the guest a virtio-rng device (virtio-mmio), fed from the host's getrandom.
    public var rng: Bool
    /// Disks, each a virtio-blk device (virtio-mmio).
    public var disks: [DiskSetting]
    /// Give the guest a virtio-console (hvc0) on the console target, which then also takes the host's input.
    public var virtioConsole: Bool
    /// The transport every VirtIO device sits on.
    public var virtioTransport: VirtioTransportKind
    /// Network interfaces, each a virtio-net device.
    public var nets: [NetSetting]
    /// A virtio-vsock device whose host side is a Unix socket (Firecracker's scheme).
    public var vsock: VsockSetting?
    /// A virtio-balloon device, resizable through the control socket.
    public var balloon: BalloonSetting?
    /// A Unix socket to serve the VM's controls on (`ControlRequest`s: status, stop, balloon).
    public var apiSocket: String?

    /// The command line a kernel gets when none is given: the console on COM1, and a panic or reboot that ends
    /// the VM at once (through a triple fault, which Tern reports) instead of hanging or looking like success.
    public static let defaultCommandLine = "console=ttyS0 reboot=t panic=-1"

    /// The command line the kernel receives.
    public var effectiveCommandLine: String { cmdline.isEmpty ? Self.defaultCommandLine : cmdline }

    /// The command line the kernel gets: the configured one with `parameters` added among the kernel's own
    /// parameters (before a `--`, after which Linux passes words to init).
    public func kernelCommandLine(adding parameters: [String]) -> String {
        var words = effectiveCommandLine.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        words.insert(contentsOf: parameters, at: words.firstIndex(of: "--") ?? words.count)
        return words.joined(separator: " ")
    }

    public static let defaultMemory = MemorySize(bytes: 256 << 20)
    /// Least guest RAM Tern accepts.
    public static let minimumMemory = GuestMemory.minimumSize
    /// Most vCPUs a guest may have.
    public static let maximumCPUs = 255

    public init(kernel: String?, firmware: FirmwareSetting? = nil, initrd: String? = nil, cmdline: String = "", memory: MemorySize = VMConfig.defaultMemory,
                cpus: Int = 1, pin: PinList? = nil, vmmPin: CPUSet? = nil, console: ConsoleSetting = .stdio,
                kvmDevice: String = "/dev/kvm", mergeable: Bool = false, hugePages: Bool = false,
                kernelDecompression: KernelDecompression = .host, rng: Bool = false, disks: [DiskSetting] = [],
                virtioConsole: Bool = false, virtioTransport: VirtioTransportKind = .pci, nets: [NetSetting] = [],
                vsock: VsockSetting? = nil, balloon: BalloonSetting? = nil, apiSocket: String? = nil, name: String? = nil) {
        self.name = name
        self.kernel = kernel
        self.firmware = firmware
        self.initrd = initrd
        self.cmdline = cmdline
        self.memory = memory
        self.cpus = cpus
        self.pin = pin
        self.vmmPin = vmmPin
        self.console = console
        self.kvmDevice = kvmDevice
        self.mergeable = mergeable
        self.hugePages = hugePages
        self.kernelDecompression = kernelDecompression
        self.rng = rng
        self.disks = disks
        self.virtioConsole = virtioConsole
        self.virtioTransport = virtioTransport
        self.nets = nets
        self.vsock = vsock
        self.balloon = balloon
        self.apiSocket = apiSocket
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, kernel, firmware, initrd, cmdline, memory, cpus, pin, console, mergeable, rng, disks, nets, vsock, balloon
        case vmmPin = "vmm_pin", kvmDevice = "kvm_device", hugePages = "huge_pages", kernelDecompression = "kernel_decompression"
        case virtioConsole = "virtio_console", virtioTransport = "virtio_transport", apiSocket = "api_socket"
    }

    struct AnyKey: CodingKey {
        let stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: any Decoder) throws {
        let known = Set(CodingKeys.allCases.map(\.rawValue))
        for key in try decoder.container(keyedBy: AnyKey.self).allKeys where !known.contains(key.stringValue) {
            throw ConfigError("unknown setting '\(key.stringValue)'; known settings are \(CodingKeys.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let container = try decoder.container(keyedBy: CodingKeys.self)
        guard container.contains(.kernel) || container.contains(.firmware) else {
            throw ConfigError("missing required setting 'kernel' (or 'firmware')")
        }
        self.init(
            kernel: try container.setting(String.self, .kernel),
            firmware: try container.setting(FirmwareSetting.self, .firmware),
            initrd: try container.setting(String.self, .initrd),
            cmdline: try container.setting(String.self, .cmdline) ?? "",
            memory: try container.setting(MemorySize.self, .memory) ?? Self.defaultMemory,
            cpus: try container.setting(Int.self, .cpus) ?? 1,
            pin: try container.setting(PinList.self, .pin),
            vmmPin: try container.setting(CPUSet.self, .vmmPin),
            console: try container.setting(ConsoleSetting.self, .console) ?? .stdio,
            kvmDevice: try container.setting(String.self, .kvmDevice) ?? "/dev/kvm",
            mergeable: try container.setting(Bool.self, .mergeable) ?? false,
            hugePages: try container.setting(Bool.self, .hugePages) ?? false,
            kernelDecompression: try container.setting(KernelDecompression.self, .kernelDecompression) ?? .host,
            rng: try container.setting(Bool.self, .rng) ?? false,
            disks: try container.setting([DiskSetting].self, .disks) ?? [],
            virtioConsole: try container.setting(Bool.self, .virtioConsole) ?? false,
            virtioTransport: try container.setting(VirtioTransportKind.self, .virtioTransport) ?? .pci,
            nets: try container.setting([NetSetting].self, .nets) ?? [],
            vsock: try container.setting(VsockSetting.self, .vsock),
            balloon: try container.setting(BalloonSetting.self, .balloon),
            apiSocket: try container.setting(String.self, .apiSocket),
            name: try container.setting(String.self, .name))
    }

    /// Decodes a JSON document read from `source` and checks it; errors name the file and the key at fault.
    /// Relative paths in it (kernel, initrd, console file, disks, vsock and API sockets) are taken relative to the
    /// file's directory.
    public static func decode(json: [UInt8], source: String) throws(ConfigError) -> VMConfig {
        var config: VMConfig
        do {
            if let duplicate = JSONKeys.firstDuplicateTopLevelKey(in: json) {
                throw ConfigError("\(duplicate) is given twice; give each setting once")
            }
            config = try JSONDecoder().decode(VMConfig.self, from: Data(json))
            try config.validate(naming: .keys)
        } catch let error as ConfigError {
            throw ConfigError("\(source): \(error.description)")
        } catch let DecodingError.keyNotFound(key, _) {
            throw ConfigError("\(source): missing required setting '\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw ConfigError("\(source): setting '\(path)' has the wrong type: \(context.debugDescription)")
        } catch let DecodingError.dataCorrupted(context) {
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            if let underlying = context.underlyingError as? ConfigError {
                throw ConfigError("\(source): \(underlying.description)")
            }
            throw ConfigError("\(source): \(path.isEmpty ? "not valid JSON" : "setting '\(path)' is invalid"): \(context.debugDescription)")
        } catch {
            throw ConfigError("\(source): \(error)")
        }
        let directory = source.lastIndex(of: "/").map { String(source[...$0]) } ?? ""
        config.resolvePaths(relativeTo: directory)
        return config
    }

    /// Prefixes `directory` (ending in "/") to every relative host path.
    public mutating func resolvePaths(relativeTo directory: String) {
        guard !directory.isEmpty else { return }
        func resolve(_ path: String) -> String { path.hasPrefix("/") ? path : directory + path }
        kernel = kernel.map(resolve)
        if let path = firmware?.path { firmware?.path = resolve(path) }
        if let path = firmware?.log { firmware?.log = resolve(path) }
        initrd = initrd.map(resolve)
        if case .file(let path) = console { console = .file(resolve(path)) }
        for index in disks.indices { disks[index].path = resolve(disks[index].path) }
        if let path = vsock?.socketPath { vsock?.socketPath = resolve(path) }
        apiSocket = apiSocket.map(resolve)
    }

    /// Checks the settings, and the memory size against the host's RAM; errors name settings as `names` says.
    /// A VM name: 1 to 64 letters, digits, '-', '_' and '.' (the rule `--name` and ternd's VM names share).
    public static func isValidName(_ name: String) -> Bool {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.".utf8)
        return !name.isEmpty && name.utf8.count <= 64 && name.utf8.allSatisfy(allowed.contains)
    }

    public func validate(naming names: SettingNames = .flags) throws(ConfigError) {
        if let name {
            guard Self.isValidName(name) else {
                throw ConfigError("\(names.name(.name)) '\(name)' is not a name; use up to 64 letters, digits, '-', '_' and '.'")
            }
        }
        switch (kernel, firmware) {
        case (nil, nil): throw ConfigError("nothing to boot; give a kernel or firmware")
        case (.some, .some): throw ConfigError("give a kernel or firmware, not both: Tern does not load kernels through firmware")
        default: break
        }
        guard (1...Self.maximumCPUs).contains(cpus) else {
            throw ConfigError("\(names.name(.cpus)) \(cpus) is out of range; give 1 to \(Self.maximumCPUs)")
        }
        if let pin, pin.sets.count != cpus {
            throw ConfigError("\(names.name(.pin)) '\(pin)' has \(pin.sets.count) entries for \(cpus) vCPUs; give exactly one core or set per vCPU")
        }
        guard memory.bytes >= Self.minimumMemory else {
            throw ConfigError("\(names.name(.memory)) \(memory): a guest needs at least \(Self.minimumMemory >> 20) MiB; give a size with a suffix, like 256M")
        }
        guard memory.bytes % 4096 == 0 else { throw ConfigError("\(names.name(.memory)) \(memory) is not a multiple of 4 KiB") }
        let hostMemory = Self.hostMemory()
        guard hostMemory == 0 || memory.bytes <= hostMemory else {
            throw ConfigError("\(names.name(.memory)) \(memory) is more than this host's \(MemorySize(bytes: (hostMemory >> 20) << 20)) of RAM and swap; give less")
        }
        try balloon?.validate(memory: memory)
    }

    /// The host's RAM and swap in bytes (MemTotal and SwapTotal in /proc/meminfo; 0 when unknown): no guest can
    /// have more.
    static func hostMemory() -> UInt64 {
        let descriptor = open("/proc/meminfo", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return 0 }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 8192)
        let count = read(descriptor, &buffer, buffer.count)
        guard count > 0 else { return 0 }
        var total: UInt64 = 0
        for line in buffer[..<count].split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: " "))
            guard fields.count >= 2 else { continue }
            let key = String(decoding: fields[0], as: UTF8.self)
            if key == "MemTotal:" || key == "SwapTotal:", let kibibytes = UInt64(String(decoding: fields[1], as: UTF8.self)) {
                total += kibibytes << 10
            }
        }
        return total
    }
}

extension KeyedDecodingContainer<VMConfig.CodingKeys> {
    /// The value at `key`, nil when absent; a `ConfigError` from the value names the key.
    func setting<T: Decodable>(_ type: T.Type, _ key: Key) throws -> T? {
        do {
            return try decodeIfPresent(type, forKey: key)
        } catch let error as ConfigError {
            throw ConfigError("\(key.rawValue): \(error.description)")
        }
    }

    /// The value at `key`, which must be present; a `ConfigError` from the value names the key.
    func requiredSetting<T: Decodable>(_ type: T.Type, _ key: Key) throws -> T {
        do {
            return try decode(type, forKey: key)
        } catch let error as ConfigError {
            throw ConfigError("\(key.rawValue): \(error.description)")
        }
    }
}

/// A scan of a JSON document's structure, for what JSONDecoder does not report.
enum JSONKeys {
    /// The first key that appears twice in the top-level object, if any (JSONDecoder keeps one and drops the
    /// other). Malformed documents yield nil: the decoder reports them.
    static func firstDuplicateTopLevelKey(in json: [UInt8]) -> String? {
        var seen: Set<[UInt8]> = []
        var depth = 0
        var index = 0
        var expectingKey = false
        while index < json.count {
            let byte = json[index]
            switch byte {
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                depth += 1
                expectingKey = byte == UInt8(ascii: "{") && depth == 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                depth -= 1
            case UInt8(ascii: ","):
                expectingKey = depth == 1
            case UInt8(ascii: "\""):
                var end = index + 1
                while end < json.count && json[end] != UInt8(ascii: "\"") {
                    end += json[end] == UInt8(ascii: "\\") ? 2 : 1
                }
                guard end < json.count else { return nil }
                if expectingKey {
                    let raw = Array(json[index...end])
                    let key = (try? JSONDecoder().decode(String.self, from: Data(raw))).map { Array($0.utf8) } ?? raw
                    if !seen.insert(key).inserted { return String(decoding: key, as: UTF8.self) }
                    expectingKey = false
                }
                index = end
            default:
                break
            }
            index += 1
        }
        return nil
    }
}

import BootLoader
import FoundationEssentials

/// How VirtIO devices reach the guest.
public enum VirtioTransportKind: String, Codable, Sendable, CaseIterable {
    /// virtio-pci (modern) behind a PCI host bridge with ECAM and MSI-X: what Linux and firmware expect.
    case pci
    /// virtio-mmio (version 2) windows described in the DSDT and on the command line: no PCI enumeration.
    case mmio
}

/// Everything needed to start a VM. `tern run` builds it from flags or from JSON (the schema the API uses).
public struct VMConfig: Equatable, Sendable, Codable {
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
    /// Most vCPUs a guest may have.
    public static let maximumCPUs = 255

    public init(kernel: String?, firmware: FirmwareSetting? = nil, initrd: String? = nil, cmdline: String = "", memory: MemorySize = VMConfig.defaultMemory,
                cpus: Int = 1, pin: PinList? = nil, vmmPin: CPUSet? = nil, console: ConsoleSetting = .stdio,
                kvmDevice: String = "/dev/kvm", mergeable: Bool = false, hugePages: Bool = false,
                kernelDecompression: KernelDecompression = .host, rng: Bool = false, disks: [DiskSetting] = [],
                virtioConsole: Bool = false, virtioTransport: VirtioTransportKind = .pci, nets: [NetSetting] = [],
                vsock: VsockSetting? = nil, balloon: BalloonSetting? = nil, apiSocket: String? = nil) {
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
        case kernel, firmware, initrd, cmdline, memory, cpus, pin, console, mergeable, rng, disks, nets, vsock, balloon
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
            kernel: try container.decodeIfPresent(String.self, forKey: .kernel),
            firmware: try container.decodeIfPresent(FirmwareSetting.self, forKey: .firmware),
            initrd: try container.decodeIfPresent(String.self, forKey: .initrd),
            cmdline: try container.decodeIfPresent(String.self, forKey: .cmdline) ?? "",
            memory: try container.decodeIfPresent(MemorySize.self, forKey: .memory) ?? Self.defaultMemory,
            cpus: try container.decodeIfPresent(Int.self, forKey: .cpus) ?? 1,
            pin: try container.decodeIfPresent(PinList.self, forKey: .pin),
            vmmPin: try container.decodeIfPresent(CPUSet.self, forKey: .vmmPin),
            console: try container.decodeIfPresent(ConsoleSetting.self, forKey: .console) ?? .stdio,
            kvmDevice: try container.decodeIfPresent(String.self, forKey: .kvmDevice) ?? "/dev/kvm",
            mergeable: try container.decodeIfPresent(Bool.self, forKey: .mergeable) ?? false,
            hugePages: try container.decodeIfPresent(Bool.self, forKey: .hugePages) ?? false,
            kernelDecompression: try container.decodeIfPresent(KernelDecompression.self, forKey: .kernelDecompression) ?? .host,
            rng: try container.decodeIfPresent(Bool.self, forKey: .rng) ?? false,
            disks: try container.decodeIfPresent([DiskSetting].self, forKey: .disks) ?? [],
            virtioConsole: try container.decodeIfPresent(Bool.self, forKey: .virtioConsole) ?? false,
            virtioTransport: try container.decodeIfPresent(VirtioTransportKind.self, forKey: .virtioTransport) ?? .pci,
            nets: try container.decodeIfPresent([NetSetting].self, forKey: .nets) ?? [],
            vsock: try container.decodeIfPresent(VsockSetting.self, forKey: .vsock),
            balloon: try container.decodeIfPresent(BalloonSetting.self, forKey: .balloon),
            apiSocket: try container.decodeIfPresent(String.self, forKey: .apiSocket))
    }

    /// Decodes a JSON document; errors name the setting at fault.
    public static func decode(json: [UInt8], source: String) throws(ConfigError) -> VMConfig {
        do {
            return try JSONDecoder().decode(VMConfig.self, from: Data(json))
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
    }

    /// Checks the settings that do not depend on the host.
    public func validate() throws(ConfigError) {
        switch (kernel, firmware) {
        case (nil, nil): throw ConfigError("nothing to boot; give a kernel or firmware")
        case (.some, .some): throw ConfigError("give a kernel or firmware, not both: Tern does not load kernels through firmware")
        default: break
        }
        guard (1...Self.maximumCPUs).contains(cpus) else {
            throw ConfigError("--cpus \(cpus) is out of range; give 1 to \(Self.maximumCPUs)")
        }
        if let pin, pin.sets.count != cpus {
            throw ConfigError("pin list '\(pin)' has \(pin.sets.count) entries for \(cpus) vCPUs; give exactly one core or set per vCPU")
        }
        guard memory.bytes % 4096 == 0 else { throw ConfigError("--memory \(memory) is not a multiple of 4 KiB") }
        try balloon?.validate(memory: memory)
    }
}

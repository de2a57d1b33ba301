import ACPI
import AHCI
import BootLoader
import CKVM
import Devices
import Firmware
import Glibc
import GuestMemory
import KVM
import Logging
import NetBackends
import PCI
import Qcow2
import Synchronization
import Virtio
import VirtioDevices
import VirtioMMIO
import X86

/// Callbacks for observing a running machine.
public struct MachineHooks: Sendable {
    /// Called on each vCPU's thread after pinning and setup, before it first enters the guest.
    public var vcpuStarted: (@Sendable (_ index: Int, _ threadID: Int32) -> Void)?

    public init(vcpuStarted: (@Sendable (_ index: Int, _ threadID: Int32) -> Void)? = nil) {
        self.vcpuStarted = vcpuStarted
    }
}

/// A VM assembled from a `VMConfig`: KVM VM, guest RAM, devices and a loaded kernel, ready to run.
public final class Machine: Sendable {
    /// Guest-physical addresses of the pages KVM reserves for Intel's real-mode TSS and identity map, in the MMIO hole.
    static let tssAddress: UInt64 = 0xFFFB_D000
    static let identityMapAddress: UInt64 = 0xFFFB_C000
    /// The ACPI tables (RSDP first, where ACPICA scans for it) and the MP table (the last KiB of base memory),
    /// both inside the BIOS area the memory map reserves.
    static let acpiBase: UInt64 = 0xE0000
    static let mpTableBase: UInt64 = 0x9_FC00
    /// virtio-mmio windows sit just below the IOAPIC, as on QEMU's microvm, with IOAPIC inputs from 16 up.
    static let virtioMMIOBase: UInt32 = 0xFEB0_0000
    static let virtioMMIOStride: UInt32 = 0x200
    static let virtioFirstGSI: UInt32 = 16
    /// I/O threads per disk with `cache=none`, each keeping one request in flight on the medium.
    static let directIOWorkers = 16
    /// Inputs of KVM's in-kernel IOAPIC.
    static let ioapicInputs: UInt32 = 24

    public let config: VMConfig
    public let memory: GuestMemory
    /// Guest RAM's memory slots, with dirty logging on demand.
    let memoryManager: MemoryManager
    /// How the kernel was loaded; nil when the guest starts from firmware.
    public let plan: BootPlan?
    /// The kernel command line the guest received.
    public let commandLine: String
    let vm: VirtualMachine
    let portBus: Bus
    let mmioBus: Bus
    let serial: Serial16550
    let cpuid: CPUIDPolicy
    let logger: Logger
    let control = MachineControl()
    /// The vCPUs' command channels.
    let vcpus: VCPUManager
    /// Commands for the VMM thread (the thread in `run`), from the control socket and `execute(_:)`.
    let commands = CommandQueue()
    /// Runs device work signalled through ioeventfds.
    /// One I/O thread per VirtIO device, as Cloud Hypervisor has: a slow disk never delays the network.
    let ioThreads: [IOThread]
    /// The disks' backends, flushed when the VM stops.
    let backends: [any BlockBackend]
    /// The balloon, when the guest has one: the control socket resizes it and reads its statistics.
    let balloon: Balloon?
    /// The virtio-console's transport, when the guest has one; it takes host input instead of the UART.
    let consoleTransport: (any VirtioTransport)?
    /// The control socket (`--api-socket`), bound and listening from the start; served while the VM runs.
    let controlServer: ControlServer?
    /// The firmware image and its devices, when the guest starts from firmware.
    let firmwareBoot: FirmwareBoot?

    /// Builds the VM. `console` overrides where guest console output goes (by default, `config.console`).
    ///
    /// Every host resource the VM needs is acquired here, before any vCPU can run: the control socket is bound
    /// and listening, disk images opened, taps opened, the vsock socket bound and the console file opened. A
    /// failure throws, and the guest never runs.
    public init(config: VMConfig, console: (any ConsoleOutput)? = nil, logger: Logger = Logger(label: "tern")) throws(MachineError) {
        do {
            try config.validate()
        } catch {
            throw MachineError(error.description)
        }
        self.config = config
        vcpus = VCPUManager(count: config.cpus, control: control)
        var logger = logger
        if let name = config.name { logger[metadataKey: "vm"] = "\(name)" }
        self.logger = logger
        if let kernel = config.kernel { try HostFiles.check(kernel, label: "--kernel \(kernel)", accepts: .regular) }
        if let firmware = config.firmware {
            try HostFiles.check(firmware.path, label: "--firmware \(firmware.path)", accepts: .regular)
        }
        if let initrd = config.initrd { try HostFiles.check(initrd, label: "--initrd \(initrd)", accepts: .regular) }
        if console == nil, case .file(let path) = config.console {
            try HostFiles.check(path, label: "--console file:\(path)", accepts: .output)
        }
        for disk in config.disks { try HostFiles.check(disk.path, label: "--disk \(disk)", accepts: .image) }
        controlServer = try config.apiSocket.map { path throws(MachineError) in try ControlServer(path: path) }
        let hypervisor: Hypervisor
        let software: Bool
        do {
            hypervisor = try Hypervisor(path: config.kvmDevice)
        } catch {
            throw MachineError(error.description)
        }
        let vcpuLimit = Int(hypervisor.capability(KVM_CAP_MAX_VCPUS))
        if vcpuLimit > 0 && config.cpus > vcpuLimit {
            throw MachineError("--cpus \(config.cpus) exceeds this host's KVM limit of \(vcpuLimit) vCPUs")
        }
        if let pin = config.pin {
            do { try pin.validate(vcpuCount: config.cpus, availableCPUs: Self.availableCPUs()) } catch { throw MachineError(error.description) }
        }
        if let vmmPin = config.vmmPin {
            do { try vmmPin.validate(availableCPUs: Self.availableCPUs(), option: "--vmm-pin") } catch { throw MachineError(error.description) }
        }

        do {
            vm = try hypervisor.createVM()
            try vm.setTSSAddress(Self.tssAddress)
            try vm.setIdentityMapAddress(Self.identityMapAddress)
            try vm.createInterruptController()
            try vm.createTimer()
            software = hypervisor.backend == .software
            if software {
                logger.info("the host's KVM virtualises in software (kvm_pvm): guest ring 0 is emulated; withholding from the guest the features the emulator cannot run (\(SoftwareVirtualization.withheldFeatures.map(\.name).joined(separator: " ")))")
            }
            cpuid = CPUIDPolicy(supported: try hypervisor.supportedCPUID(), vcpuCount: config.cpus, softwareVirtualization: software)
        } catch {
            throw MachineError(error.description)
        }

        do {
            memory = try GuestMemory(size: config.memory.bytes,
                                     options: MemoryOptions(mergeable: config.mergeable, hugePages: config.hugePages))
        } catch {
            throw MachineError("--memory \(config.memory): \(error)")
        }
        guard memory.regions.count <= hypervisor.memorySlotLimit else {
            throw MachineError("guest RAM needs \(memory.regions.count) memory slots but KVM offers \(hypervisor.memorySlotLimit)")
        }
        do {
            memoryManager = try MemoryManager(memory: memory, vm: vm)
        } catch {
            throw MachineError(error.description)
        }

        let output: any ConsoleOutput
        if let console {
            output = console
        } else {
            switch config.console {
            case .stdio: output = FileDescriptorOutput(descriptor: STDOUT_FILENO, owned: false)
            case .none: output = DiscardOutput()
            case .file(let path):
                do { output = try FileDescriptorOutput(appendingTo: path) } catch { throw MachineError(error.description) }
            }
        }
        var mmio = Bus()
        let memory = memory
        var specs: [VirtioDeviceSpec] = []
        var backends: [any BlockBackend] = []
        var ahciDrives: [DriveConfiguration] = []
        for (index, disk) in config.disks.enumerated() {
            let backend: any BlockBackend
            do {
                backend = try openImage(path: disk.path, format: disk.format.map(\.imageFormat), writable: !disk.readOnly,
                                        cache: disk.cache)
            } catch {
                throw MachineError("disk \(disk.path): \(error)")
            }
            backends.append(backend)
            let serial = disk.serial ?? "tern-disk\(index)"
            if disk.interface == .ahci {
                ahciDrives.append(DriveConfiguration(media: disk.media == .cdrom ? .cdrom : .disk, backend: backend,
                                                     readOnly: disk.readOnly, serial: serial))
                continue
            }
            specs.append(VirtioDeviceSpec(name: "virtio-blk \(index)") { [logger] watcher in
                var ring: BlockRingEngine?
                if disk.aio == .ioUring {
                    do throws(BlockRingError) {
                        ring = try BlockRingEngine(backend: backend, queueSize: Block.defaultQueueSize, watcher: watcher)
                        logger.debug("virtio-blk \(index): reads and writes go through io_uring")
                    } catch .notRawFile {
                        logger.debug("virtio-blk \(index): only raw images go through io_uring")
                    } catch {
                        logger.info("virtio-blk \(index): \(error); using aio=\(disk.cache == .none ? "threads" : "sync")")
                    }
                }
                // Without a ring, O_DIRECT requests wait on the medium: keep the guest's queue depth in flight there.
                let threads = ring == nil && (disk.aio == .threads || disk.aio == .ioUring && disk.cache == .none)
                return Block(memory: memory, backend: backend, readOnly: disk.readOnly, serial: serial,
                             ioWorkers: threads ? Self.directIOWorkers : 0, ring: ring)
            })
        }
        if config.virtioConsole {
            specs.append(VirtioDeviceSpec(name: "virtio-console", takesConsoleInput: true) { _ in Console(memory: memory, output: output) })
        }
        if config.rng { specs.append(VirtioDeviceSpec(name: "virtio-rng") { _ in Entropy(memory: memory) }) }
        if let setting = config.vsock {
            let backend: UnixSocketVsockBackend
            do {
                backend = try UnixSocketVsockBackend(path: setting.socketPath)
            } catch {
                throw MachineError("--vsock \(setting): \(error)")
            }
            specs.append(VirtioDeviceSpec(name: "virtio-vsock") { watcher in
                Vsock(memory: memory, guestCID: setting.guestCID, backend: backend, watcher: watcher)
            })
        }
        var balloon: Balloon?
        if let setting = config.balloon {
            let device = Balloon(memory: memory, options: setting.options)
            if let target = setting.target { device.setTarget(bytes: target.bytes) }
            specs.append(VirtioDeviceSpec(name: "virtio-balloon") { _ in device })
            balloon = device
        }
        self.balloon = balloon
        for (index, net) in config.nets.enumerated() {
            let backend: any NetBackend
            do {
                switch net.backend {
                case .tap(let name): backend = try TapBackend(name: name)
                case .user(let forwards):
                    backend = try SlirpBackend(forwards: forwards) { [logger] line in logger.warning("virtio-net \(index): \(line)") }
                }
            } catch {
                throw MachineError("--net \(net): \(error)")
            }
            let mac = net.macAddress(index: index)
            specs.append(VirtioDeviceSpec(name: "virtio-net \(index)") { watcher throws(MachineError) in
                do {
                    return try Net(memory: memory, backend: backend, watcher: watcher, mac: mac)
                } catch {
                    throw MachineError("--net \(net): \(error)")
                }
            })
        }
        self.backends = backends
        var virtioSlots: [VirtioMMIODevice] = []
        var pciBridge: PCIHostBridge?
        var pciPorts: PCIConfigurationPorts?
        let transports: [any VirtioTransport]
        ioThreads = try specs.map { spec throws(MachineError) in try IOThread(name: spec.threadName) }
        switch config.virtioTransport {
        case .mmio:
            guard ahciDrives.isEmpty else { throw MachineError("AHCI disks need --virtio-transport pci") }
            (virtioSlots, transports) = try Self.attachMMIO(specs, memory: memory, vm: vm, bus: &mmio, ioThreads: ioThreads,
                                                           logger: logger)
        case .pci:
            let functions = try Self.ahciFunction(ahciDrives, memory: memory, logger: logger)
            let attached = try Self.attachPCI(specs, functions: functions, memory: memory, vm: vm, bus: &mmio,
                                              ioThreads: ioThreads, logger: logger)
            (pciBridge, pciPorts, transports) = (attached.bridge, attached.ports, attached.transports)
        }
        consoleTransport = zip(specs, transports).first { $0.0.takesConsoleInput }?.1
        // Linux finds virtio-mmio devices through the DSDT; small guests (and kernels built with
        // VIRTIO_MMIO_CMDLINE_DEVICES) read them from the command line, the syntax QEMU's microvm uses.
        var parameters = virtioSlots.map { "virtio_mmio.device=\($0.size)@0x\(String($0.base, radix: 16)):\($0.gsi)" }
        // Linux would otherwise pick instructions and detectors such hosts cannot serve; other kernels get the
        // user's command line unchanged.
        if software, let kernel = config.kernel, HostFiles.isLinuxKernel(kernel) {
            logger.info("adding '\(SoftwareVirtualization.linuxParameters.joined(separator: " "))' to the Linux kernel's command line")
            parameters += SoftwareVirtualization.linuxParameters
        }
        commandLine = config.kernelCommandLine(adding: parameters)

        let platform = PlatformDescription(vcpuCount: config.cpus, virtioMMIO: virtioSlots, pciHostBridge: pciBridge)
        if let kernel = config.kernel {
            let firmware: ACPITableSet
            do {
                firmware = try ACPIBuilder.build(platform, at: Self.acpiBase)
                try memory.write(firmware.blob, at: firmware.baseAddress)
                try memory.write(MPTable.build(vcpuCount: config.cpus, at: Self.mpTableBase), at: Self.mpTableBase)
            } catch {
                throw MachineError("firmware tables: \(error)")
            }

            do {
                plan = try KernelLoader.load(kernelPath: kernel, initrdPath: config.initrd,
                                             commandLine: commandLine, into: memory, memoryIsZeroed: true,
                                             rsdpAddress: firmware.rsdpAddress,
                                             decompression: config.kernelDecompression)
            } catch {
                throw MachineError(error.description)
            }
        } else {
            plan = nil
        }

        serial = Serial16550(output: output, interrupt: KVMInterruptLine(vm: vm, gsi: Serial16550.com1IRQ))

        var ports = Bus()
        let control = control
        do {
            try ports.register(serial, base: Serial16550.com1Base, length: 8)
            if let pciPorts { try ports.register(pciPorts, base: PCIConfigurationPorts.basePort, length: PCIConfigurationPorts.portCount) }
            try ports.register(I8042(onReset: { control.stop(.reset) }), base: I8042.dataPort, length: I8042.portSpan)
            try ports.register(DebugExit(onExit: { control.stop(.guestExit($0)) }), base: DebugExit.port, length: 1)
            let highMemory = memory.regions.dropFirst().reduce(UInt64(0)) { $0 + $1.size }
            try ports.register(CMOSRTC(memoryBelow4GiB: memory.size - highMemory, memoryAbove4GiB: highMemory,
                                       bootOrder: (config.firmware?.bootOrder ?? []).map { $0 == .cdrom ? .cdrom : .disk }),
                               base: CMOSRTC.port, length: CMOSRTC.portSpan)
        } catch {
            throw MachineError("device layout: \(error)")
        }
        if let setting = config.firmware {
            firmwareBoot = try FirmwareBoot.attach(setting, memory: memory, vm: vm, slot: UInt32(memory.regions.count),
                                                   platform: platform,
                                                   bootOrder: FirmwareBoot.bootOrder(config.disks, ahciSlot: specs.count + 1,
                                                                                     kinds: setting.bootOrder),
                                                   ports: &ports, mmio: &mmio,
                                                   onReset: { control.stop(.reset) }, logger: logger)
        } else {
            firmwareBoot = nil
        }
        portBus = ports
        mmioBus = mmio
    }

    /// Hands bytes typed on the host to the guest's console: the virtio-console when there is one, else COM1.
    /// Returns how many leading bytes the guest had room for; the rest are dropped.
    @discardableResult
    /// While the VM is paused the guest takes nothing: every byte is dropped.
    public func typeIntoConsole(_ bytes: [UInt8]) -> Int {
        guard !control.isPaused else { return 0 }
        guard let consoleTransport else {
            return serial.receive(bytes)
        }
        return consoleTransport.withDevice { device in
            guard var console = device as? Console else { return 0 }
            let accepted = console.receive(bytes)
            device = console
            return accepted
        }
    }

    /// Ends the VM with `outcome`, unless it has already ended. Safe from any thread.
    public func stop(_ outcome: MachineOutcome) {
        control.stop(outcome)
    }

    /// The kernel thread IDs of the vCPU threads that have started, by vCPU index.
    public var vcpuThreadIDs: [Int: Int32] {
        control.threadIDs
    }

    /// CPUs this process may run on.
    public static func availableCPUs() -> [Int32] {
        var cpus = [Int32](repeating: 0, count: 4096)
        let count = ckvm_get_affinity(0, &cpus, Int32(cpus.count))
        return count > 0 ? Array(cpus[0..<Int(count)]) : []
    }
}

extension DiskSetting.Format {
    /// The qcow2 engine's name for this format.
    var imageFormat: ImageFormat {
        switch self {
        case .raw: .raw
        case .qcow2: .qcow2
        }
    }
}

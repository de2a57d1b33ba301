import ACPI
import Glibc
import Devices
import GuestMemory
import KVM
import Logging
import PCI
import Synchronization
import Virtio
import VirtioMMIO
import VirtioPCI

/// What the VMM needs from a VirtIO transport, whichever it is: deliver queue notifications and host events
/// from the I/O thread, and reach the device for host-initiated work.
protocol VirtioTransport: AnyObject, Sendable {
    /// Number of queues the device has.
    var queueCount: Int { get }
    /// An available-buffer notification for `queue`, arriving through an ioeventfd.
    func notify(queue: Int)
    /// A host descriptor the device watches became ready.
    func hostEvent(token: UInt32, events: HostEventKind)
    /// Runs `body` on the device under the transport's lock.
    func withDevice<R>(_ body: (inout any VirtioDevice) -> sending R) -> sending R
}

extension VirtioMMIOTransport: VirtioTransport {}

/// A transport that exists only after the device it carries was made: host events reach the device through it.
final class TransportReference: Sendable {
    private let transport = Mutex<(any VirtioTransport)?>(nil)

    func bind(_ value: any VirtioTransport) { transport.withLock { $0 = value } }

    func hostEvent(token: UInt32, events: HostEventKind) {
        transport.withLock { $0 }?.hostEvent(token: token, events: events)
    }
}

/// One VirtIO device the machine offers, made (given its host-event watcher) where its transport takes it over.
struct VirtioDeviceSpec {
    /// Names the device in log lines: "virtio-blk 0", "virtio-rng".
    let name: String
    /// Host input typed on the console goes to this device (the virtio-console).
    var takesConsoleInput = false
    let make: (any HostEventWatcher) throws(MachineError) -> any VirtioDevice

    /// The name of the device's I/O thread: "io-blk0" for "virtio-blk 0".
    var threadName: String {
        "io-" + name.replacing("virtio-", with: "").replacing(" ", with: "")
    }
}

extension Machine {
    /// A queue-notification handler that also traces each notification when `logger` is at trace level (`-vv`);
    /// the level is read once, so an untraced VM pays nothing.
    static func traced(_ name: String, queue: Int, logger: Logger, _ handler: @escaping @Sendable () -> Void) -> @Sendable () -> Void {
        guard logger.logLevel <= .trace else { return handler }
        return {
            logger.trace("\(name): queue \(queue) notified")
            handler()
        }
    }

    /// Puts each device on virtio-mmio: one 512-byte window and one level-triggered IOAPIC input each, from
    /// `virtioMMIOBase` and GSI `virtioFirstGSI` up. Queue notifications go through ioeventfds to the device's
    /// I/O thread (`ioThreads`, one per spec); should KVM refuse one, the MMIO exit still works.
    static func attachMMIO(
        _ specs: [VirtioDeviceSpec], memory: GuestMemory, vm: VirtualMachine, bus: inout Bus, ioThreads: [IOThread],
        logger: Logger
    ) throws(MachineError) -> ([VirtioMMIODevice], [any VirtioTransport]) {
        var slots: [VirtioMMIODevice] = []
        var transports: [any VirtioTransport] = []
        for (spec, ioThread) in zip(specs, ioThreads) {
            let index = UInt32(slots.count)
            let slot = VirtioMMIODevice(base: virtioMMIOBase + index * virtioMMIOStride, size: virtioMMIOStride,
                                        gsi: virtioFirstGSI + index)
            guard slot.gsi < ioapicInputs else {
                throw MachineError("too many virtio devices: at most \(ioapicInputs - virtioFirstGSI) fit virtio-mmio's IOAPIC inputs; use --virtio-transport pci")
            }
            let reference = TransportReference()
            let watcher = ioThread.addDevice { token, events in reference.hostEvent(token: token, events: events) }
            let name = spec.name
            let transport = VirtioMMIOTransport(device: try spec.make(watcher), memory: memory,
                                                interrupt: KVMInterruptLine(vm: vm, gsi: slot.gsi),
                                                debugLog: { [logger] line in logger.debug("\(name): \(line)") },
                                                errorLog: { [logger] line in logger.warning("\(name): \(line)") })
            reference.bind(transport)
            ioThread.onPause { transport.withDevice { $0.quiesce() } }
            do {
                try bus.register(transport, base: UInt64(slot.base), length: UInt64(slot.size))
            } catch {
                throw MachineError("device layout: \(error)")
            }
            var descriptors: [Int32] = []
            for queue in 0..<transport.queueCount {
                let descriptor = try ioThread.addEvent(traced(name, queue: queue, logger: logger) { transport.notify(queue: queue) })
                descriptors.append(descriptor)
                do {
                    try vm.registerNotification(mmioAddress: UInt64(slot.base) + VirtioMMIOTransport.queueNotifyOffset,
                                                length: 4, value: UInt64(queue), descriptor: descriptor)
                } catch {
                    logger.info("\(name) queue notifications stay on vCPU threads: \(error)")
                }
            }
            transport.setServiceRequestHandler { [descriptors] queue in
                guard descriptors.indices.contains(queue) else { return }
                var one: UInt64 = 1
                _ = write(descriptors[queue], &one, 8)
            }
            slots.append(slot)
            transports.append(transport)
        }
        return (slots, transports)
    }
}

extension VirtioPCITransport: VirtioTransport {}

/// The queue ioeventfds of one virtio-pci function, registered at its notification addresses while the guest lets
/// the function decode its BAR, and moved when the guest moves the BAR.
final class NotificationRegistrar: Sendable {
    private struct State {
        var descriptors: [Int32] = []
        var offsets: [UInt64] = []
        var base: UInt64?
    }

    private let vm: VirtualMachine
    private let name: String
    private let logger: Logger
    private let state = Mutex(State())

    init(vm: VirtualMachine, name: String, logger: Logger) {
        self.vm = vm
        self.name = name
        self.logger = logger
    }

    /// The eventfd and BAR offset of each queue's notification.
    func bind(descriptors: [Int32], offsets: [UInt64]) {
        state.withLock {
            $0.descriptors = descriptors
            $0.offsets = offsets
        }
    }

    /// The BAR now decodes at `base` (nil: not at all): move the ioeventfds there.
    func barMoved(to base: UInt64?) {
        state.withLock { state in
            if let old = state.base {
                for (queue, descriptor) in state.descriptors.enumerated() {
                    try? vm.unregisterNotification(mmioAddress: old + state.offsets[queue], length: VirtioPCITransport.notifyWidth,
                                                   value: UInt64(queue), descriptor: descriptor)
                }
            }
            state.base = base
            guard let base else { return }
            for (queue, descriptor) in state.descriptors.enumerated() {
                do {
                    try vm.registerNotification(mmioAddress: base + state.offsets[queue], length: VirtioPCITransport.notifyWidth,
                                                value: UInt64(queue), descriptor: descriptor)
                } catch {
                    logger.info("\(name) queue \(queue) notifications stay on vCPU threads: \(error)")
                }
            }
        }
    }
}

extension Machine {
    /// Puts each device behind a PCI host bridge as function 00:(n+1).0 with virtio-pci (modern): BAR 0 assigned
    /// here, 1 MiB apart in the 32-bit window (no firmware runs to do it), MSI-X through KVM irq routing and irqfds,
    /// INTA# on the GSI `PCIInterruptRouting` gives its slot, shared with other slots there. Configuration space
    /// answers at the ECAM (MMIO) and at ports 0xCF8–0xCFF (`configurationPorts`, for the port bus).
    static func attachPCI(
        _ specs: [VirtioDeviceSpec], functions: [PCIFunctionSpec] = [], memory: GuestMemory, vm: VirtualMachine, bus: inout Bus,
        ioThreads: [IOThread], logger: Logger
    ) throws(MachineError) -> (bridge: PCIHostBridge, ports: PCIConfigurationPorts, transports: [any VirtioTransport]) {
        let barStride: UInt64 = 1 << 20
        let window = PCIMemoryMap.mmio32
        guard UInt64(specs.count + functions.count) <= min(31, UInt64(window.count) / barStride) else {
            throw MachineError("too many PCI functions: \(specs.count) virtio devices and \(functions.count) others; at most 31 fit PCI bus 0")
        }
        let router = KVMGSIRouter(vm: vm, logger: logger)
        var sharedLines: [UInt32: SharedInterruptLine] = [:]
        var transports: [VirtioPCITransport] = []
        for (index, (spec, ioThread)) in zip(specs, ioThreads).enumerated() {
            let reference = TransportReference()
            let watcher = ioThread.addDevice { token, events in reference.hostEvent(token: token, events: events) }
            let device = try spec.make(watcher)
            let barSize = VirtioPCITransport.barSize(for: device)
            guard barSize <= barStride else {
                throw MachineError("\(spec.name): its BAR of \(barSize) bytes exceeds the \(barStride)-byte slot")
            }
            let slot = UInt8(index + 1)
            let gsi = PCIInterruptRouting.gsi(slot: slot, pin: .intA)
            let line = sharedLines[gsi, default: SharedInterruptLine(KVMInterruptLine(vm: vm, gsi: gsi))]
            sharedLines[gsi] = line
            let msix = try KVMMSIXRouting(vm: vm, router: router,
                                          vectorCount: VirtioPCITransport.msixVectorCount(queueCount: device.queueCount))
            let name = spec.name
            let registrar = NotificationRegistrar(vm: vm, name: name, logger: logger)
            let transport = VirtioPCITransport(device: device, memory: memory,
                                               barAddress: window.lowerBound + UInt64(index) * barStride,
                                               interrupt: line.makeSource(), interruptLineRegister: UInt8(gsi), msix: msix,
                                               onBARChange: { registrar.barMoved(to: $0) },
                                               debugLog: { [logger] line in logger.debug("\(name): \(line)") },
                                               errorLog: { [logger] line in logger.warning("\(name): \(line)") })
            reference.bind(transport)
            ioThread.onPause { transport.withDevice { $0.quiesce() } }
            var descriptors: [Int32] = []
            var offsets: [UInt64] = []
            for queue in 0..<transport.queueCount {
                descriptors.append(try ioThread.addEvent(traced(name, queue: queue, logger: logger) { transport.notify(queue: queue) }))
                offsets.append(transport.notifyOffset(queue: queue) ?? 0)
            }
            registrar.bind(descriptors: descriptors, offsets: offsets)
            transport.setServiceRequestHandler { [descriptors] queue in
                guard descriptors.indices.contains(queue) else { return }
                var one: UInt64 = 1
                _ = write(descriptors[queue], &one, 8)
            }
            transports.append(transport)
        }
        // Other functions follow the VirtIO devices, their INTA# lines shared as the slots' GSIs say.
        var others: [any PCIDevice] = []
        for (index, function) in functions.enumerated() {
            let gsi = PCIInterruptRouting.gsi(slot: UInt8(transports.count + index + 1), pin: .intA)
            let line = sharedLines[gsi, default: SharedInterruptLine(KVMInterruptLine(vm: vm, gsi: gsi))]
            sharedLines[gsi] = line
            others.append(function.make(line.makeSource(), gsi))
        }
        let root: PCIRoot
        do {
            root = try PCIRoot(devices: transports + others)
            try bus.register(PCIECAM(root: root), base: PCIMemoryMap.ecamBase, length: PCIMemoryMap.ecamSize)
            try bus.register(PCIMemoryWindow(root: root, base: window.lowerBound), base: window.lowerBound,
                             length: UInt64(window.count))
            let firmwareWindow = PCIMemoryMap.firmwareMMIO32
            try bus.register(PCIMemoryWindow(root: root, base: firmwareWindow.lowerBound), base: firmwareWindow.lowerBound,
                             length: UInt64(firmwareWindow.count))
        } catch {
            throw MachineError("PCI layout: \(error)")
        }
        let bridge = PCIHostBridge(ecamBase: PCIMemoryMap.ecamBase, busRange: 0...0,
                                   mmio32: UInt32(window.lowerBound)...UInt32(window.upperBound),
                                   intxFirstGSI: PCIInterruptRouting.firstGSI, intxGSICount: PCIInterruptRouting.gsiCount)
        return (bridge, PCIConfigurationPorts(root: root), transports)
    }
}

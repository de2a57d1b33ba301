import Devices
import GuestMemory
import PCI
import Synchronization
import Virtio

/// The modern virtio-pci transport (VIRTIO 1.2 §4.1): one `VirtioDevice` as a PCI function with vendor ID 0x1AF4,
/// device ID 0x1040 + type, revision 1 and subsystem 1AF4:(0x1040 + type). Its vendor capabilities point into one
/// 64-bit memory BAR 0 (layout in `VirtioPCILayout`) holding the common, notification, ISR and device structures
/// and the MSI-X table and pending bits; a PCI configuration access capability reaches the same BAR through
/// configuration space. Interrupts go through MSI-X vectors (queues + 1) while the driver enables MSI-X, else
/// through ISR status and a level INTA# line.
///
/// Access rules in the BAR: the common structure takes reads of 1 to 8 bytes anywhere and writes of exactly one
/// field (or one 32-bit half of a queue address); the device configuration takes up to 8 bytes; a notification is
/// a write of up to 4 bytes at queue n's slot; the MSI-X structures take aligned dwords and qwords. Anything else
/// reads as zero or is dropped, with one line to `debugLog`. Driver mistakes set DEVICE_NEEDS_RESET with one line
/// to `errorLog` and a configuration-change interrupt; nothing the guest writes traps. Bus Master Enable is not
/// enforced: the device reaches guest memory and sends MSIs whatever its value, as other lightweight VMMs do.
///
/// Locking: configuration space sits under `space`, the common registers and the device under `state`, interrupt
/// delivery under `interrupts`; the device's interrupt signals take only `interrupts`, so a device may signal from
/// inside `notify(queue:)`. Order: `mapping`, `space`, `state`, `interrupts` (then the routing's own lock); the
/// configuration-access window releases `space` before it reaches into the BAR.
public final class VirtioPCITransport: PCIDevice, InterruptSignal {
    /// The PCI vendor ID of every virtio device.
    public static let vendorID: UInt16 = 0x1AF4
    /// Device IDs are this plus the virtio device type.
    public static let deviceIDBase: UInt16 = 0x1040
    /// The revision of a non-transitional device.
    public static let revision: UInt8 = 1
    /// The BAR holding every structure.
    public static let barIndex = 0
    /// VIRTIO_MSI_NO_VECTOR.
    public static let noVector = VirtioPCIInterrupts.noVector
    /// Bytes a driver writes to notify a queue (its 16-bit index): the length for an ioeventfd at `notifyAddress`.
    public static let notifyWidth: UInt32 = 2

    /// MSI-X vectors a device with `queueCount` queues gets: one per queue and one for configuration changes.
    /// The `MSIXRouting` given to `init` must serve that many.
    public static func msixVectorCount(queueCount: Int) -> Int { queueCount + 1 }

    /// The size of BAR 0 a transport for `device` will have, so that the VMM can place the BAR before it hands
    /// the device over: `init` needs `barAddress` aligned to it.
    public static func barSize(for device: any VirtioDevice) -> UInt64 {
        VirtioPCILayout(queueCount: device.queueCount, configurationSize: device.configurationSize).barSize
    }

    struct State {
        var device: any VirtioDevice
        var negotiation: FeatureNegotiation
        /// The features accepted at FEATURES_OK.
        var negotiated: VirtioFeatures = []
        var queues: [QueueSetup]
        var status: DeviceStatus = []
        var deviceFeaturesSelect: UInt32 = 0
        var driverFeaturesSelect: UInt32 = 0
        var queueSelect: UInt16 = 0
        /// Whether `activate` succeeded; notifications reach the device only then.
        var active = false
    }

    /// Number of queues the device has.
    public let queueCount: Int
    /// Size of BAR 0 in bytes, a power of two of at least 16 KiB.
    public var barSize: UInt64 { layout.barSize }

    let layout: VirtioPCILayout
    let memory: GuestMemory
    let debugLog: @Sendable (String) -> Void
    let errorLog: @Sendable (String) -> Void
    let onBARChange: @Sendable (UInt64?) -> Void
    /// Offset of the PCI configuration access capability in configuration space.
    let windowCapability: Int
    /// Offset of the MSI-X capability in configuration space.
    let msixCapability: Int
    /// BAR 0's base as last reported to `onBARChange`.
    let mapping = Mutex<UInt64?>(nil)
    let space: Mutex<PCIConfigSpace>
    let state: Mutex<State>
    let interrupts: Mutex<VirtioPCIInterrupts>
    /// Where `requestService(queue:)` goes: set by the VMM once the notification path exists.
    let serviceRequests = Mutex<(@Sendable (Int) -> Void)?>(nil)

    /// Exposes `device`, whose queues live in `memory`, with BAR 0 programmed to `barAddress` (aligned to
    /// `barSize`; memory decoding stays off until the guest enables it), INTA# driving `line`, the Interrupt Line
    /// register reading `interruptLineRegister` (the GSI `PCIInterruptRouting` gives the slot; 0xFF: unknown), and
    /// MSI-X delivered through `msix`, which must serve `msixVectorCount(queueCount:)` vectors.
    ///
    /// `onBARChange` receives BAR 0's base whenever the function starts decoding it at a new address (memory space
    /// enabled, or the BAR moved while enabled) and nil when it stops (memory space disabled). The VMM moves its
    /// queue ioeventfds there: queue n's notification address is the base plus `notifyOffset(queue:)`, a
    /// `notifyWidth`-byte write of n. It runs on the vCPU thread that wrote configuration space, serialised with
    /// the other reports of this transport; it may call `notifyAddress(queue:)` but must not access configuration
    /// space. `debugLog` receives one line per ignored guest access, `errorLog` one line per device reset request;
    /// both run with the transport locked and must not call back into it.
    public init(
        device: sending any VirtioDevice, memory: GuestMemory, barAddress: UInt64, interrupt line: any InterruptLine,
        interruptLineRegister: UInt8 = 0xFF, msix routing: any MSIXRouting,
        onBARChange: @escaping @Sendable (UInt64?) -> Void = { _ in },
        debugLog: @escaping @Sendable (String) -> Void = { _ in },
        errorLog: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        let type = device.deviceType
        precondition(type.rawValue < 0x40, "virtio device type \(type.rawValue) has no PCI device ID")
        let queueCount = device.queueCount
        let msix = MSIXTable(vectorCount: Self.msixVectorCount(queueCount: queueCount), routing: routing)
        let layout = VirtioPCILayout(queueCount: queueCount, configurationSize: device.configurationSize)
        precondition(barAddress % layout.barSize == 0, "BAR address is not aligned to the BAR's size")

        let configuration = layout.configurationSpace(
            type: type, barAddress: barAddress, interruptLine: interruptLineRegister, msix: msix)
        windowCapability = configuration.windowCapability
        msixCapability = configuration.msixCapability
        let negotiation = FeatureNegotiation(offered: device.features)
        let queues = (0..<queueCount).map { QueueSetup(size: device.maximumQueueSize($0)) }
        state = Mutex(State(device: device, negotiation: negotiation, queues: queues))
        interrupts = Mutex(VirtioPCIInterrupts(queueCount: queueCount, msix: msix, line: line))
        space = Mutex(configuration.space)
        self.queueCount = queueCount
        self.layout = layout
        self.memory = memory
        self.onBARChange = onBARChange
        self.debugLog = debugLog
        self.errorLog = errorLog
    }

    // MARK: Public surface for the VMM

    /// Offset in BAR 0 of queue `queue`'s notification address, or nil when there is no such queue.
    public func notifyOffset(queue: Int) -> UInt64? {
        guard queue >= 0, queue < queueCount else { return nil }
        return VirtioPCILayout.notifyOffset + VirtioPCILayout.notifyMultiplier * UInt64(queue)
    }

    /// Queue `queue`'s notification address as the guest has BAR 0 programmed now, or nil when there is no such
    /// queue or the function does not decode its BAR.
    public func notifyAddress(queue: Int) -> UInt64? {
        guard let offset = notifyOffset(queue: queue),
            let bar = space.withLock({ $0.mappedBAR(Self.barIndex) })
        else { return nil }
        return bar.base + offset
    }

    /// Runs `body` on the device under the transport's lock, for work the VMM starts itself, such as feeding
    /// host input to a console. The device may signal interrupts from `body`; `body` must not call back into
    /// the transport.
    public func withDevice<R>(_ body: (inout any VirtioDevice) -> sending R) -> sending R {
        state.withLock { body(&$0.device) }
    }

    /// Handles a notification for `queue` that arrived outside the BAR (an eventfd on an I/O thread).
    public func notify(queue: Int) {
        state.withLock { notify(queue: queue, &$0) }
    }

    /// Passes readiness of a host descriptor the device watches to the device (from an I/O thread).
    public func hostEvent(token: UInt32, events: HostEventKind) {
        state.withLock { $0.device.hostEvent(token: token, events: events) }
    }

    // MARK: PCIDevice: BAR 0

    public func readBAR(_ index: Int, offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard index == Self.barIndex, data.count <= 8, let region = layout.region(at: offset, length: data.count) else {
            return ignoredRead(offset, data)
        }
        let width = data.count
        let value: UInt64
        switch region {
        case .common(let at):
            value = state.withLock { readCommon(at, width: width, &$0) }
        case .isr:
            value = UInt64(interrupts.withLock { $0.takeISR() })
        case .device(let at):
            value = state.withLock { state in
                interrupts.withLock { $0.noteConfigurationRead() }
                var value: UInt64 = 0
                withUnsafeMutableBytes(of: &value) {
                    state.device.readConfiguration(offset: at, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<width]))
                }
                return UInt64(littleEndian: value)
            }
        case .table(let at):
            guard let entry = interrupts.withLock({ $0.msix.readTable(offset: at, width: width) }) else {
                return ignoredRead(offset, data)
            }
            value = entry
        case .pending(let at):
            guard let bits = interrupts.withLock({ $0.msix.readPendingBits(offset: at, width: width) }) else {
                return ignoredRead(offset, data)
            }
            value = bits
        case .notify:
            return ignoredRead(offset, data)
        }
        withUnsafeBytes(of: value.littleEndian) { data.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<width])) }
    }

    public func writeBAR(_ index: Int, offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard index == Self.barIndex, data.count <= 8, let region = layout.region(at: offset, length: data.count) else {
            return ignoredWrite(offset, data.count)
        }
        let width = data.count
        var value: UInt64 = 0
        withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: data) }
        value = UInt64(littleEndian: value)
        switch region {
        case .common(let at):
            state.withLock { writeCommon(at, width: width, value: value, &$0) }
        case .device(let at):
            let bytes = value.littleEndian
            state.withLock { state in
                withUnsafeBytes(of: bytes) {
                    state.device.writeConfiguration(offset: at, bytes: UnsafeRawBufferPointer(rebasing: $0[0..<width]))
                }
            }
        case .notify(let at):
            guard at % Int(VirtioPCILayout.notifyMultiplier) == 0, width <= 4 else { return ignoredWrite(offset, width) }
            state.withLock { notify(queue: at / Int(VirtioPCILayout.notifyMultiplier), &$0) }
        case .table(let at):
            if !interrupts.withLock({ $0.msix.writeTable(offset: at, width: width, value: value) }) {
                ignoredWrite(offset, width)
            }
        case .isr, .pending:
            ignoredWrite(offset, width)
        }
    }

    private func ignoredRead(_ offset: UInt64, _ data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 }
        debugLog("virtio-pci: ignored \(data.count)-byte read at BAR offset 0x\(String(offset, radix: 16))")
    }

    private func ignoredWrite(_ offset: UInt64, _ width: Int) {
        debugLog("virtio-pci: ignored \(width)-byte write at BAR offset 0x\(String(offset, radix: 16))")
    }

    // MARK: InterruptSignal

    public func signalUsedBuffers(queue: Int) {
        interrupts.withLock { $0.raiseQueue(queue) }
    }

    public func signalConfigurationChange() {
        interrupts.withLock { interrupts in
            interrupts.configurationChanged = true
            interrupts.raiseConfiguration()
        }
    }

    public func requestService(queue: Int) {
        serviceRequests.withLock { $0 }?(queue)
    }

    /// Routes the device's `requestService(queue:)` calls, typically to the queue's notification eventfd.
    public func setServiceRequestHandler(_ handler: @escaping @Sendable (Int) -> Void) {
        serviceRequests.withLock { $0 = handler }
    }

    public func signalNeedsReset(reason: String) {
        errorLog("virtio-pci: device needs reset: \(reason)")
        interrupts.withLock { interrupts in
            interrupts.needsReset = true
            interrupts.raiseConfiguration()
        }
    }
}

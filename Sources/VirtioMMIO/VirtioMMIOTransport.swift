import Devices
import GuestMemory
import Synchronization
import Virtio

/// The virtio-mmio transport, version 2 (VIRTIO 1.2 §4.2): one `VirtioDevice` behind a 0x200-byte register
/// window on the MMIO bus, with a level-triggered interrupt line.
///
/// Registers below 0x100 take aligned 32-bit accesses only; any other access is ignored (reads return zero)
/// with one line to `debugLog`, meant for the VMM's debug-level log. The device configuration space, from
/// 0x100, is passed through to the device at widths up to 8 bytes. Driver mistakes (a refused feature set,
/// rings outside RAM, a failed activation) set DEVICE_NEEDS_RESET and raise a configuration-change interrupt;
/// nothing the guest writes traps.
///
/// Locking: register accesses and the device run under `state`; the device's interrupt signals take only
/// `interrupts`, so a device may signal from inside `notify(queue:)`. Order: `state`, then `interrupts`.
public final class VirtioMMIOTransport: BusDevice, InterruptSignal {
    /// "virt" in little-endian ASCII.
    public static let magicValue: UInt32 = 0x7472_6976
    /// The virtio-mmio interface version implemented (2: non-legacy).
    public static let version: UInt32 = 2
    /// The VendorID register: "TERN" in big-endian ASCII. Linux matches drivers on DeviceID only.
    public static let vendorID: UInt32 = 0x4E52_4554
    /// Where the device configuration space starts in the window.
    public static let configurationOffset: UInt64 = 0x100

    /// Size of the register window to register on the MMIO bus.
    public let mmioSize: UInt64 = 0x200

    /// Register offsets (VIRTIO 1.2 §4.2.2, table 4.1).
    enum Register {
        static let magicValue: UInt64 = 0x000
        static let version: UInt64 = 0x004
        static let deviceID: UInt64 = 0x008
        static let vendorID: UInt64 = 0x00C
        static let deviceFeatures: UInt64 = 0x010
        static let deviceFeaturesSelect: UInt64 = 0x014
        static let driverFeatures: UInt64 = 0x020
        static let driverFeaturesSelect: UInt64 = 0x024
        static let queueSelect: UInt64 = 0x030
        static let queueSizeMaximum: UInt64 = 0x034
        static let queueSize: UInt64 = 0x038
        static let queueReady: UInt64 = 0x044
        static let queueNotify: UInt64 = 0x050
        static let interruptStatus: UInt64 = 0x060
        static let interruptAcknowledge: UInt64 = 0x064
        static let status: UInt64 = 0x070
        static let queueDescriptorLow: UInt64 = 0x080
        static let queueDescriptorHigh: UInt64 = 0x084
        static let queueDriverLow: UInt64 = 0x090
        static let queueDriverHigh: UInt64 = 0x094
        static let queueDeviceLow: UInt64 = 0x0A0
        static let queueDeviceHigh: UInt64 = 0x0A4
        static let sharedMemoryLengthLow: UInt64 = 0x0B0
        static let sharedMemoryLengthHigh: UInt64 = 0x0B4
        static let sharedMemoryBaseLow: UInt64 = 0x0B8
        static let sharedMemoryBaseHigh: UInt64 = 0x0BC
        static let configGeneration: UInt64 = 0x0FC
    }

    /// InterruptStatus bit: a queue has new used buffers.
    static let usedBufferInterrupt: UInt32 = 1
    /// InterruptStatus bit: the configuration changed (or the device needs a reset).
    static let configurationInterrupt: UInt32 = 2

    struct State {
        var device: any VirtioDevice
        var negotiation: FeatureNegotiation
        /// The features accepted at FEATURES_OK.
        var negotiated: VirtioFeatures = []
        var queues: [QueueSetup]
        var status: DeviceStatus = []
        var deviceFeaturesSelect: UInt32 = 0
        var driverFeaturesSelect: UInt32 = 0
        var queueSelect: UInt32 = 0
        /// Whether `activate` succeeded; notifications reach the device only then.
        var active = false
    }

    struct Interrupts {
        var status: UInt32 = 0
        var needsReset = false
        var configGeneration: UInt32 = 0
        /// Where `requestService(queue:)` goes: set by the VMM once the notification path exists.
        var serviceRequests: (@Sendable (Int) -> Void)?
    }

    private let memory: GuestMemory
    private let line: any InterruptLine
    private let debugLog: @Sendable (String) -> Void
    private let errorLog: @Sendable (String) -> Void
    private let state: Mutex<State>
    private let interrupts = Mutex(Interrupts())

    /// Exposes `device`, whose queues live in `memory`, raising `line` while InterruptStatus is non-zero.
    /// `debugLog` receives one line per ignored guest access; it runs with the transport locked and must not
    /// call back into it.
    public init(
        device: sending any VirtioDevice, memory: GuestMemory, interrupt line: any InterruptLine,
        debugLog: @escaping @Sendable (String) -> Void = { _ in },
        errorLog: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        let negotiation = FeatureNegotiation(offered: device.features)
        let queues = Array(repeating: QueueSetup(), count: device.queueCount)
        state = Mutex(State(device: device, negotiation: negotiation, queues: queues))
        self.memory = memory
        self.line = line
        self.debugLog = debugLog
        self.errorLog = errorLog
    }

    // MARK: BusDevice

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        if offset >= Self.configurationOffset {
            guard data.count <= 8, offset < mmioSize, UInt64(data.count) <= mmioSize - offset else {
                return ignoredRead(offset, data)
            }
            // Bounced through a local value: the guest's buffer must not enter the lock's isolation region.
            let count = data.count
            let configurationOffset = Int(offset - Self.configurationOffset)
            let value: UInt64 = state.withLock { state in
                var value: UInt64 = 0
                withUnsafeMutableBytes(of: &value) {
                    state.device.readConfiguration(
                        offset: configurationOffset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<count])
                    )
                }
                return value
            }
            withUnsafeBytes(of: value) { data.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            return
        }
        guard data.count == 4, offset % 4 == 0 else { return ignoredRead(offset, data) }
        let value = state.withLock { readRegister(offset, &$0) }
        data.storeBytes(of: value.littleEndian, as: UInt32.self)
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        if offset >= Self.configurationOffset {
            guard data.count <= 8, offset < mmioSize, UInt64(data.count) <= mmioSize - offset else {
                return debugLog("virtio-mmio: ignored \(data.count)-byte write at 0x\(String(offset, radix: 16))")
            }
            let count = data.count
            var value: UInt64 = 0
            withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: data) }
            let configurationOffset = Int(offset - Self.configurationOffset)
            state.withLock { state in
                withUnsafeBytes(of: value) {
                    state.device.writeConfiguration(
                        offset: configurationOffset, bytes: UnsafeRawBufferPointer(rebasing: $0[0..<count])
                    )
                }
            }
            return
        }
        guard data.count == 4, offset % 4 == 0 else {
            return debugLog("virtio-mmio: ignored \(data.count)-byte write at 0x\(String(offset, radix: 16))")
        }
        let value = UInt32(littleEndian: data.loadUnaligned(as: UInt32.self))
        state.withLock { writeRegister(offset, value, &$0) }
    }

    private func ignoredRead(_ offset: UInt64, _ data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0)
        debugLog("virtio-mmio: ignored \(data.count)-byte read at 0x\(String(offset, radix: 16))")
    }

    private func readRegister(_ offset: UInt64, _ state: inout State) -> UInt32 {
        let queue = Int(exactly: state.queueSelect).flatMap { $0 < state.queues.count ? $0 : nil }
        switch offset {
        case Register.magicValue: return Self.magicValue
        case Register.version: return Self.version
        case Register.deviceID: return state.device.deviceType.rawValue
        case Register.vendorID: return Self.vendorID
        case Register.deviceFeatures: return state.negotiation.offeredWord(select: state.deviceFeaturesSelect)
        case Register.queueSizeMaximum: return queue.map { UInt32(state.device.maximumQueueSize($0)) } ?? 0
        case Register.queueReady: return queue.map { state.queues[$0].isEnabled ? 1 : 0 } ?? 0
        case Register.interruptStatus: return interrupts.withLock { $0.status }
        case Register.status:
            let needsReset = interrupts.withLock { $0.needsReset }
            return UInt32(state.status.union(needsReset ? .deviceNeedsReset : []).rawValue)
        // No shared memory regions: a length of all ones says the selected region does not exist.
        case Register.sharedMemoryLengthLow, Register.sharedMemoryLengthHigh,
            Register.sharedMemoryBaseLow, Register.sharedMemoryBaseHigh:
            return UInt32.max
        case Register.configGeneration: return interrupts.withLock { $0.configGeneration }
        default: return 0
        }
    }

    private func writeRegister(_ offset: UInt64, _ value: UInt32, _ state: inout State) {
        switch offset {
        case Register.deviceFeaturesSelect: state.deviceFeaturesSelect = value
        case Register.driverFeatures:
            guard !state.status.contains(.featuresOK) else {
                return debugLog("virtio-mmio: driver features written after FEATURES_OK")
            }
            state.negotiation.acknowledge(word: value, select: state.driverFeaturesSelect)
        case Register.driverFeaturesSelect: state.driverFeaturesSelect = value
        case Register.queueSelect: state.queueSelect = value
        case Register.queueNotify:
            // The one call a later ioeventfd path replaces.
            notify(queue: value, &state)
        case Register.interruptAcknowledge:
            interrupts.withLock { interrupts in
                interrupts.status &= ~value
                line.setLevel(interrupts.status != 0)
            }
        case Register.status: writeStatus(value, &state)
        case Register.queueSize, Register.queueReady, Register.queueDescriptorLow, Register.queueDescriptorHigh,
            Register.queueDriverLow, Register.queueDriverHigh, Register.queueDeviceLow, Register.queueDeviceHigh:
            writeQueueRegister(offset, value, &state)
        default: debugLog("virtio-mmio: write to read-only or absent register 0x\(String(offset, radix: 16))")
        }
    }

    /// Queue registers change only for an existing, not yet ready queue, before DRIVER_OK; QueueReady may
    /// also be cleared again before DRIVER_OK.
    private func writeQueueRegister(_ offset: UInt64, _ value: UInt32, _ state: inout State) {
        guard let index = Int(exactly: state.queueSelect), index < state.queues.count,
            !state.status.contains(.driverOK)
        else { return debugLog("virtio-mmio: queue register 0x\(String(offset, radix: 16)) write ignored") }
        var queue = state.queues[index]
        defer { state.queues[index] = queue }
        if offset == Register.queueReady {
            queue.isEnabled = value == 1
            return
        }
        guard !queue.isEnabled else { return debugLog("virtio-mmio: queue \(index) is ready; its registers are frozen") }
        func setLow(_ field: inout UInt64) { field = field & 0xFFFF_FFFF_0000_0000 | UInt64(value) }
        func setHigh(_ field: inout UInt64) { field = field & 0xFFFF_FFFF | UInt64(value) << 32 }
        switch offset {
        case Register.queueSize:
            let maximum = UInt32(state.device.maximumQueueSize(index))
            guard value != 0, value <= maximum, value & (value - 1) == 0 else {
                return debugLog("virtio-mmio: queue \(index) size \(value) is not a power of two up to \(maximum)")
            }
            queue.size = UInt16(value)
        case Register.queueDescriptorLow: setLow(&queue.descriptorTable)
        case Register.queueDescriptorHigh: setHigh(&queue.descriptorTable)
        case Register.queueDriverLow: setLow(&queue.availableRing)
        case Register.queueDriverHigh: setHigh(&queue.availableRing)
        case Register.queueDeviceLow: setLow(&queue.usedRing)
        default: setHigh(&queue.usedRing)
        }
    }

    /// The device status state machine (VIRTIO 1.2 §3.1.1, `StatusWrite`): zero resets.
    private func writeStatus(_ value: UInt32, _ state: inout State) {
        if value == 0 { return reset(&state) }
        guard value <= UInt8.max else { return debugLog("virtio-mmio: status 0x\(String(value, radix: 16)) ignored") }
        let write = StatusWrite(UInt8(value), current: state.status, negotiation: state.negotiation)
        if let refusal = write.refusal { debugLog("virtio-mmio: \(refusal)") }
        if let negotiated = write.negotiated { state.negotiated = negotiated }
        state.status = write.status
        if write.activates { activate(&state) }
    }

    /// Builds the ready queues and starts the device; any failure asks the driver for a reset.
    private func activate(_ state: inout State) {
        do {
            try state.device.activate(status: state.status, negotiated: state.negotiated, queues: state.queues, memory: memory,
                                      interrupt: self)
            state.active = true
        } catch {
            signalNeedsReset(reason: "\(error)")
        }
    }

    /// Offset of the QueueNotify register, for routing notifications through an eventfd.
    public static let queueNotifyOffset: UInt64 = Register.queueNotify

    /// Number of queues the device has.
    public var queueCount: Int { state.withLock { $0.queues.count } }

    /// Runs `body` on the device under the transport's lock, for work the VMM starts itself, such as feeding
    /// host input to a console. The device may signal interrupts from `body`; `body` must not call back into
    /// the transport.
    public func withDevice<R>(_ body: (inout any VirtioDevice) -> sending R) -> sending R {
        state.withLock { body(&$0.device) }
    }

    /// Handles a notification for `queue` that arrived outside the register path (an eventfd on an I/O thread).
    public func notify(queue: Int) {
        state.withLock { state in notify(queue: UInt32(truncatingIfNeeded: queue), &state) }
    }

    /// Passes readiness of a host descriptor the device watches to the device (from an I/O thread).
    public func hostEvent(token: UInt32, events: HostEventKind) {
        state.withLock { $0.device.hostEvent(token: token, events: events) }
    }

    /// Passes an available-buffer notification to the device when it is running and the queue is ready.
    private func notify(queue value: UInt32, _ state: inout State) {
        guard state.active, let index = Int(exactly: value), index < state.queues.count, state.queues[index].isEnabled,
            !interrupts.withLock({ $0.needsReset })
        else { return debugLog("virtio-mmio: notification for queue \(value) ignored") }
        state.device.notify(queue: index)
    }

    /// Device and transport back to their initial state, interrupt line low.
    private func reset(_ state: inout State) {
        state.device.reset()
        state.negotiation.reset()
        state.negotiated = []
        state.queues = Array(repeating: QueueSetup(), count: state.queues.count)
        state.status = []
        state.deviceFeaturesSelect = 0
        state.driverFeaturesSelect = 0
        state.queueSelect = 0
        state.active = false
        interrupts.withLock { interrupts in
            interrupts.status = 0
            interrupts.needsReset = false
            line.setLevel(false)
        }
    }

    // MARK: InterruptSignal

    public func signalUsedBuffers(queue: Int) { raise(Self.usedBufferInterrupt) }

    public func signalConfigurationChange() {
        interrupts.withLock { $0.configGeneration &+= 1 }
        raise(Self.configurationInterrupt)
    }

    public func signalNeedsReset(reason: String) {
        errorLog("virtio-mmio: device needs reset: \(reason)")
        interrupts.withLock { $0.needsReset = true }
        raise(Self.configurationInterrupt)
    }

    public func requestService(queue: Int) {
        interrupts.withLock { $0.serviceRequests }?(queue)
    }

    /// Routes the device's `requestService(queue:)` calls, typically to the queue's notification eventfd.
    public func setServiceRequestHandler(_ handler: @escaping @Sendable (Int) -> Void) {
        interrupts.withLock { $0.serviceRequests = handler }
    }

    private func raise(_ bit: UInt32) {
        interrupts.withLock { interrupts in
            interrupts.status |= bit
            line.setLevel(true)
        }
    }
}

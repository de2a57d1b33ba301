import Virtio

/// The common configuration structure's registers, the device status state machine, queue set-up, activation and
/// reset: the same rules as virtio-mmio, through VIRTIO 1.2 §4.1.4.3's fields.
extension VirtioPCITransport {
    /// The selected queue, when it exists.
    private func selectedQueue(_ state: State) -> Int? {
        Int(state.queueSelect) < state.queues.count ? Int(state.queueSelect) : nil
    }

    /// Reads `width` bytes at `offset` of the common structure, field by field; reads have no side effects.
    func readCommon(_ offset: Int, width: Int, _ state: inout State) -> UInt64 {
        var value: UInt64 = 0
        var field = (start: -1, value: UInt64(0))
        for byte in offset..<offset + width {
            let start = Common.field(containing: byte).start
            if start != field.start { field = (start, readField(start, &state)) }
            value |= (field.value >> (8 * UInt64(byte - start)) & 0xFF) << (8 * UInt64(byte - offset))
        }
        return value
    }

    private func readField(_ field: Int, _ state: inout State) -> UInt64 {
        let queue = selectedQueue(state)
        switch field {
        case Common.deviceFeatureSelect: return UInt64(state.deviceFeaturesSelect)
        case Common.deviceFeature: return UInt64(state.negotiation.offeredWord(select: state.deviceFeaturesSelect))
        case Common.driverFeatureSelect: return UInt64(state.driverFeaturesSelect)
        case Common.driverFeature: return UInt64(state.negotiation.acknowledgedWord(select: state.driverFeaturesSelect))
        case Common.configMSIXVector: return UInt64(interrupts.withLock { $0.configVector })
        case Common.numQueues: return UInt64(state.queues.count)
        case Common.deviceStatus:
            let needsReset = interrupts.withLock { $0.needsReset }
            return UInt64(state.status.union(needsReset ? .deviceNeedsReset : []).rawValue)
        case Common.configGeneration: return UInt64(interrupts.withLock { $0.generation })
        case Common.queueSelect: return UInt64(state.queueSelect)
        case Common.queueSize: return queue.map { UInt64(state.queues[$0].size) } ?? 0
        case Common.queueMSIXVector:
            return UInt64(queue.map { queue in interrupts.withLock { $0.queueVectors[queue] } } ?? Self.noVector)
        case Common.queueEnable: return queue.map { state.queues[$0].isEnabled ? 1 : 0 } ?? 0
        case Common.queueNotifyOff: return UInt64(queue ?? 0)
        case Common.queueDescriptor: return queue.map { state.queues[$0].descriptorTable } ?? 0
        case Common.queueDriver: return queue.map { state.queues[$0].availableRing } ?? 0
        case Common.queueDevice: return queue.map { state.queues[$0].usedRing } ?? 0
        default: return 0
        }
    }

    /// Writes one field: the driver writes each at its own width, a queue address also as two 32-bit halves.
    func writeCommon(_ offset: Int, width: Int, value: UInt64, _ state: inout State) {
        let word = UInt32(truncatingIfNeeded: value)
        switch (offset, width) {
        case (Common.deviceFeatureSelect, 4): state.deviceFeaturesSelect = word
        case (Common.driverFeatureSelect, 4): state.driverFeaturesSelect = word
        case (Common.driverFeature, 4):
            guard !state.status.contains(.featuresOK) else {
                return debugLog("virtio-pci: driver features written after FEATURES_OK")
            }
            state.negotiation.acknowledge(word: word, select: state.driverFeaturesSelect)
        case (Common.configMSIXVector, 2):
            interrupts.withLock { $0.configVector = $0.mappable(UInt16(truncatingIfNeeded: value)) }
        case (Common.deviceStatus, 1): writeStatus(UInt8(truncatingIfNeeded: value), &state)
        case (Common.queueSelect, 2): state.queueSelect = UInt16(truncatingIfNeeded: value)
        case (Common.queueMSIXVector, 2):
            guard let queue = selectedQueue(state) else {
                return debugLog("virtio-pci: MSI-X vector for absent queue \(state.queueSelect) ignored")
            }
            interrupts.withLock { $0.queueVectors[queue] = $0.mappable(UInt16(truncatingIfNeeded: value)) }
        case (Common.queueSize, 2), (Common.queueEnable, 2),
            (Common.queueDescriptor, 4), (Common.queueDescriptor + 4, 4), (Common.queueDescriptor, 8),
            (Common.queueDriver, 4), (Common.queueDriver + 4, 4), (Common.queueDriver, 8),
            (Common.queueDevice, 4), (Common.queueDevice + 4, 4), (Common.queueDevice, 8):
            writeQueueRegister(offset, width: width, value: value, &state)
        default:
            debugLog("virtio-pci: \(width)-byte write at common offset 0x\(String(offset, radix: 16)) ignored")
        }
    }

    /// Queue registers change only for an existing, not yet enabled queue, before DRIVER_OK. queue_enable takes
    /// only 1: the driver may not write 0 (VIRTIO 1.2 §4.1.4.3.2).
    private func writeQueueRegister(_ offset: Int, width: Int, value: UInt64, _ state: inout State) {
        guard let index = selectedQueue(state), !state.status.contains(.driverOK) else {
            return debugLog("virtio-pci: queue register 0x\(String(offset, radix: 16)) write ignored")
        }
        guard !state.queues[index].isEnabled else {
            return debugLog("virtio-pci: queue \(index) is enabled; its registers are frozen")
        }
        var queue = state.queues[index]
        defer { state.queues[index] = queue }
        func set(_ field: inout UInt64, at start: Int) {
            if width == 8 {
                field = value
            } else if offset == start {
                field = field & 0xFFFF_FFFF_0000_0000 | value & 0xFFFF_FFFF
            } else {
                field = field & 0xFFFF_FFFF | value << 32
            }
        }
        switch offset {
        case Common.queueSize:
            let maximum = UInt64(state.device.maximumQueueSize(index))
            guard value != 0, value <= maximum, value & (value - 1) == 0 else {
                return debugLog("virtio-pci: queue \(index) size \(value) is not a power of two up to \(maximum)")
            }
            queue.size = UInt16(value)
        case Common.queueEnable:
            guard value == 1, queue.size != 0 else {
                return debugLog("virtio-pci: queue \(index) enable write \(value) ignored")
            }
            queue.isEnabled = true
        case Common.queueDescriptor, Common.queueDescriptor + 4: set(&queue.descriptorTable, at: Common.queueDescriptor)
        case Common.queueDriver, Common.queueDriver + 4: set(&queue.availableRing, at: Common.queueDriver)
        default: set(&queue.usedRing, at: Common.queueDevice)
        }
    }

    /// The device status state machine (VIRTIO 1.2 §3.1.1, `StatusWrite`): zero resets.
    private func writeStatus(_ value: UInt8, _ state: inout State) {
        if value == 0 { return reset(&state) }
        let write = StatusWrite(value, current: state.status, negotiation: state.negotiation)
        if let refusal = write.refusal { debugLog("virtio-pci: \(refusal)") }
        if let negotiated = write.negotiated { state.negotiated = negotiated }
        state.status = write.status
        if write.activates { activate(&state) }
    }

    /// Builds the enabled queues and starts the device; any failure asks the driver for a reset.
    private func activate(_ state: inout State) {
        do {
            try state.device.activate(status: state.status, negotiated: state.negotiated, queues: state.queues, memory: memory,
                                      interrupt: self)
            state.active = true
        } catch {
            signalNeedsReset(reason: "\(error)")
        }
    }

    /// Passes an available-buffer notification to the device when it is running and the queue is enabled.
    func notify(queue index: Int, _ state: inout State) {
        guard state.active, index >= 0, index < state.queues.count, state.queues[index].isEnabled,
            !interrupts.withLock({ $0.needsReset })
        else { return debugLog("virtio-pci: notification for queue \(index) ignored") }
        state.device.notify(queue: index)
    }

    /// Device and transport back to their initial state: queues at their maximum size and disabled, every event
    /// unmapped, ISR status clear, INTx# deasserted.
    private func reset(_ state: inout State) {
        state.device.reset()
        state.negotiation.reset()
        state.negotiated = []
        state.queues = (0..<state.queues.count).map { QueueSetup(size: state.device.maximumQueueSize($0)) }
        state.status = []
        state.deviceFeaturesSelect = 0
        state.driverFeaturesSelect = 0
        state.queueSelect = 0
        state.active = false
        interrupts.withLock { $0.reset() }
    }
}

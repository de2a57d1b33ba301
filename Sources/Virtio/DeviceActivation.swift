import GuestMemory

/// How a driver's non-zero write to the device status field turns out (VIRTIO 1.2 §3.1.1): bits are only ever
/// added; FEATURES_OK sticks only after ACKNOWLEDGE and DRIVER, before DRIVER_OK, and with a valid feature set;
/// DEVICE_NEEDS_RESET belongs to the device. Both transports apply it; a write of zero (reset) is theirs to handle.
public struct StatusWrite: Sendable, Equatable {
    /// The status to store.
    public var status: DeviceStatus
    /// The features accepted, when this write set FEATURES_OK.
    public var negotiated: VirtioFeatures?
    /// DRIVER_OK was added: the transport activates the device.
    public var activates: Bool
    /// What was ignored and why, for the transport's debug log.
    public var refusal: String?

    public init(_ value: UInt8, current: DeviceStatus, negotiation: FeatureNegotiation) {
        var requested = DeviceStatus(rawValue: value).subtracting(.deviceNeedsReset)
        guard requested.isSuperset(of: current) else {
            self.init(status: current, negotiated: nil, activates: false,
                      refusal: "status write 0x\(String(value, radix: 16)) clears bits; ignored")
            return
        }
        let added = requested.subtracting(current)
        var negotiated: VirtioFeatures?
        var refusal: String?
        if added.contains(.featuresOK) {
            if !requested.isSuperset(of: [.acknowledge, .driver]) || current.contains(.driverOK) {
                refusal = "FEATURES_OK refused: it needs ACKNOWLEDGE and DRIVER, and precedes DRIVER_OK"
                requested.remove(.featuresOK)
            } else {
                do {
                    negotiated = try negotiation.validate()
                } catch {
                    refusal = "FEATURES_OK refused: \(error)"
                    requested.remove(.featuresOK)
                }
            }
        }
        self.init(status: requested, negotiated: negotiated, activates: added.contains(.driverOK), refusal: refusal)
    }

    private init(status: DeviceStatus, negotiated: VirtioFeatures?, activates: Bool, refusal: String?) {
        self.status = status
        self.negotiated = negotiated
        self.activates = activates
        self.refusal = refusal
    }
}

/// One queue as the driver sets it up through a transport's registers; the transports keep their queue registers
/// in it.
public struct QueueSetup: Sendable, Equatable {
    public var isEnabled: Bool
    public var size: UInt16
    public var descriptorTable: UInt64
    public var availableRing: UInt64
    public var usedRing: UInt64

    public init(
        isEnabled: Bool = false, size: UInt16 = 0, descriptorTable: UInt64 = 0, availableRing: UInt64 = 0, usedRing: UInt64 = 0
    ) {
        self.isEnabled = isEnabled
        self.size = size
        self.descriptorTable = descriptorTable
        self.availableRing = availableRing
        self.usedRing = usedRing
    }
}

extension VirtioDevice {
    /// Starts the device on DRIVER_OK: builds the queues the driver enabled (nil for the others) over `memory` with
    /// the `negotiated` features and hands them over. Throws the reason to report with DEVICE_NEEDS_RESET.
    public mutating func activate(
        status: DeviceStatus, negotiated: VirtioFeatures, queues setups: [QueueSetup], memory: GuestMemory,
        interrupt: any InterruptSignal
    ) throws(VirtioDeviceError) {
        guard status.contains(.featuresOK) else { throw .featuresNotAccepted }
        var queues: [SplitQueue?] = []
        for (index, setup) in setups.enumerated() {
            guard setup.isEnabled else {
                queues.append(nil)
                continue
            }
            do {
                queues.append(
                    try SplitQueue(
                        memory: memory, size: setup.size, descriptorTable: setup.descriptorTable,
                        availableRing: setup.availableRing, usedRing: setup.usedRing, features: negotiated))
            } catch {
                throw .queue(index, error)
            }
        }
        try activate(features: negotiated, queues: queues, interrupt: interrupt)
    }
}

/// Feature bits, as offered by a device and acknowledged by its driver (VIRTIO 1.2 §2.2, §6).
public struct VirtioFeatures: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The feature with bit number `bit` (0–63).
    public init(bit: Int) {
        precondition((0..<64).contains(bit), "feature bit \(bit) is not in 0...63")
        rawValue = 1 << UInt64(bit)
    }

    /// VIRTIO_F_INDIRECT_DESC: descriptors may point at indirect descriptor tables.
    public static let indirectDescriptors = Self(bit: 28)
    /// VIRTIO_F_EVENT_IDX: notifications are suppressed with used_event and avail_event.
    public static let eventIndex = Self(bit: 29)
    /// VIRTIO_F_VERSION_1: the device follows VIRTIO 1.x rather than the legacy interface.
    public static let version1 = Self(bit: 32)
    /// VIRTIO_F_ACCESS_PLATFORM: the device's memory accesses go through a platform IOMMU.
    public static let accessPlatform = Self(bit: 33)
    /// VIRTIO_F_RING_PACKED: the packed virtqueue layout. Tern implements split queues only and never offers it.
    public static let ringPacked = Self(bit: 34)
}

/// The device status register (VIRTIO 1.2 §2.1).
public struct DeviceStatus: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8

    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The guest has found the device.
    public static let acknowledge = Self(rawValue: 1)
    /// The guest knows how to drive the device.
    public static let driver = Self(rawValue: 2)
    /// The driver is set up and ready to drive the device.
    public static let driverOK = Self(rawValue: 4)
    /// Feature negotiation is complete.
    public static let featuresOK = Self(rawValue: 8)
    /// The device hit an error it cannot recover from without a reset.
    public static let deviceNeedsReset = Self(rawValue: 64)
    /// The guest has given up on the device.
    public static let failed = Self(rawValue: 128)
}

/// Why the driver's feature selection was refused at FEATURES_OK.
public enum FeatureNegotiationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The driver acknowledged bits the device did not offer.
    case notOffered(VirtioFeatures)
    /// The driver acknowledged a bit above 63 (in feature word `select`); none is ever offered.
    case notOfferedWord(select: UInt32)
    /// The driver did not acknowledge VIRTIO_F_VERSION_1; Tern has no legacy interface.
    case version1NotAcknowledged

    public var description: String {
        switch self {
        case .notOffered(let features):
            return "driver acknowledged feature bits 0x\(String(features.rawValue, radix: 16)) that the device did not offer"
        case .notOfferedWord(let select):
            return "driver acknowledged feature bits in word \(select), above bit 63, that the device did not offer"
        case .version1NotAcknowledged:
            return "driver did not acknowledge VIRTIO_F_VERSION_1 (bit 32); legacy drivers are not supported"
        }
    }
}

/// The feature handshake between a device and its driver, seen through 32-bit feature words as both
/// MMIO and PCI transports expose them.
public struct FeatureNegotiation: Sendable, Equatable {
    /// What the device offers.
    public let offered: VirtioFeatures
    /// What the driver has written so far.
    public private(set) var acknowledged: VirtioFeatures = []
    /// The first feature word above 63 the driver wrote a non-zero value to, if any.
    private var unofferedWord: UInt32?

    /// Offers `offered`, which must include VERSION_1 and must not include RING_PACKED.
    public init(offered: VirtioFeatures) {
        precondition(offered.contains(.version1), "a VIRTIO 1.x device must offer VIRTIO_F_VERSION_1")
        precondition(!offered.contains(.ringPacked), "packed virtqueues are not implemented")
        self.offered = offered
    }

    /// Device feature word `select` (0: bits 0–31, 1: bits 32–63, higher: zero).
    public func offeredWord(select: UInt32) -> UInt32 { Self.word(offered, select: select) }

    /// Driver feature word `select` as last written.
    public func acknowledgedWord(select: UInt32) -> UInt32 { Self.word(acknowledged, select: select) }

    /// Records the driver writing `value` to driver feature word `select`.
    public mutating func acknowledge(word value: UInt32, select: UInt32) {
        switch select {
        case 0: acknowledged = VirtioFeatures(rawValue: acknowledged.rawValue & ~0xFFFF_FFFF | UInt64(value))
        case 1: acknowledged = VirtioFeatures(rawValue: acknowledged.rawValue & 0xFFFF_FFFF | UInt64(value) << 32)
        default: if value != 0 && unofferedWord == nil { unofferedWord = select }
        }
    }

    /// The negotiated features, when the driver's selection is acceptable (checked when it sets FEATURES_OK).
    public func validate() throws(FeatureNegotiationError) -> VirtioFeatures {
        let extra = acknowledged.subtracting(offered)
        guard extra.isEmpty else { throw .notOffered(extra) }
        if let unofferedWord { throw .notOfferedWord(select: unofferedWord) }
        guard acknowledged.contains(.version1) else { throw .version1NotAcknowledged }
        return acknowledged
    }

    /// Forgets the driver's selection, as a device reset does.
    public mutating func reset() {
        acknowledged = []
        unofferedWord = nil
    }

    private static func word(_ features: VirtioFeatures, select: UInt32) -> UInt32 {
        switch select {
        case 0: return UInt32(truncatingIfNeeded: features.rawValue)
        case 1: return UInt32(truncatingIfNeeded: features.rawValue >> 32)
        default: return 0
        }
    }
}

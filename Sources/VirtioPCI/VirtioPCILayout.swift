import PCI
import Virtio

/// The `cfg_type` of a virtio vendor capability (VIRTIO 1.2 §4.1.4).
public enum VirtioPCICapabilityType: UInt8, Sendable, CaseIterable {
    case commonConfiguration = 1
    case notification = 2
    case interruptStatus = 3
    case deviceConfiguration = 4
    case pciConfigurationAccess = 5
}

/// Where the virtio structures and the MSI-X table lie in the transport's one BAR, a 64-bit non-prefetchable memory
/// BAR 0 whose size is the next power of two (at least 16 KiB) that holds them all:
///
///     0x0000  common configuration (0x38 bytes, VIRTIO 1.0 layout: no NOTIF_CONFIG_DATA or RING_RESET fields)
///     0x0800  ISR status (1 byte)
///     0x1000  device configuration (the device's size rounded up to a dword, at least 4 bytes; at most 4 KiB)
///     0x2000  notifications: queue n at 0x2000 + 4n (queue_notify_off n, multiplier 4; at most 1024 queues)
///     0x3000  MSI-X table, 16 bytes per vector
///     then    MSI-X pending bits, at the next 2 KiB boundary (0x3800 up to 128 vectors)
struct VirtioPCILayout: Sendable {
    static let commonOffset: UInt64 = 0x0000
    static let commonLength: UInt64 = 0x38
    static let isrOffset: UInt64 = 0x0800
    static let isrLength: UInt64 = 1
    static let deviceOffset: UInt64 = 0x1000
    static let notifyOffset: UInt64 = 0x2000
    static let notifyMultiplier: UInt64 = 4
    static let tableOffset: UInt64 = 0x3000
    /// Most queues the notification region has room for.
    static let maximumQueues = 1024

    let deviceLength: UInt64
    let notifyLength: UInt64
    let tableLength: UInt64
    let pendingOffset: UInt64
    let pendingLength: UInt64
    let barSize: UInt64

    /// The layout for a device with `queueCount` queues (1–1024), one MSI-X vector more, and `configurationSize`
    /// bytes (at most 4 KiB) of device configuration.
    init(queueCount: Int, configurationSize: Int) {
        precondition((1...Self.maximumQueues).contains(queueCount), "virtio-pci carries 1 to 1024 queues")
        precondition((0...0x1000).contains(configurationSize), "device configuration larger than 4 KiB")
        let vectors = VirtioPCITransport.msixVectorCount(queueCount: queueCount)
        deviceLength = UInt64(max(4, (configurationSize + 3) & ~3))
        notifyLength = Self.notifyMultiplier * UInt64(queueCount)
        tableLength = UInt64(MSIXTable.tableSize(vectorCount: vectors))
        pendingOffset = Self.tableOffset + ((tableLength + 0x7FF) & ~0x7FF)
        pendingLength = UInt64(MSIXTable.pendingArraySize(vectorCount: vectors))
        var size: UInt64 = 0x4000
        while size < pendingOffset + pendingLength { size <<= 1 }
        barSize = size
    }

    /// A structure an access falls in, with the access's offset inside it.
    enum Region {
        case common(Int)
        case isr(Int)
        case device(Int)
        case notify(Int)
        case table(Int)
        case pending(Int)
    }

    /// The structure holding all of a `length`-byte access at BAR offset `offset`, if one does.
    func region(at offset: UInt64, length: Int) -> Region? {
        func inside(_ start: UInt64, _ size: UInt64) -> Int? {
            guard offset >= start, offset - start < size, UInt64(length) <= size - (offset - start) else { return nil }
            return Int(offset - start)
        }
        if let at = inside(Self.commonOffset, Self.commonLength) { return .common(at) }
        if let at = inside(Self.isrOffset, Self.isrLength) { return .isr(at) }
        if let at = inside(Self.deviceOffset, deviceLength) { return .device(at) }
        if let at = inside(Self.notifyOffset, notifyLength) { return .notify(at) }
        if let at = inside(Self.tableOffset, tableLength) { return .table(at) }
        if let at = inside(pendingOffset, pendingLength) { return .pending(at) }
        return nil
    }
}

extension VirtioPCILayout {
    /// The class code a device type presents, following QEMU's choices so that guests see familiar values.
    static func classCode(for type: VirtioDeviceType) -> PCIClassCode {
        switch type {
        case .network: PCIClassCode(base: 0x02, subclass: 0x00)  // Ethernet controller
        case .block, .scsi: PCIClassCode(base: 0x01, subclass: 0x00)  // SCSI storage controller
        case .console, .vsock: PCIClassCode(base: 0x07, subclass: 0x80)  // other communication controller
        case .gpu: PCIClassCode(base: 0x03, subclass: 0x80)  // other display controller
        case .input: PCIClassCode(base: 0x09, subclass: 0x80)  // other input controller
        case .filesystem: PCIClassCode(base: 0x01, subclass: 0x80)  // other mass storage controller
        default: PCIClassCode(base: 0xFF, subclass: 0x00)  // unassigned class: entropy, balloon and the rest
        }
    }
}

extension VirtioPCILayout {
    /// The configuration space of a device of `type`: identity, BAR 0 at `barAddress`, INTA#, and the capability
    /// list — common, notification, ISR, device and configuration-access structures, then MSI-X. Returns it with
    /// the offsets of the configuration-access and MSI-X capabilities.
    func configurationSpace(type: VirtioDeviceType, barAddress: UInt64, interruptLine: UInt8, msix: MSIXTable)
        -> (space: PCIConfigSpace, windowCapability: Int, msixCapability: Int)
    {
        let deviceID = VirtioPCITransport.deviceIDBase + UInt16(type.rawValue)
        let identity = PCIIdentity(
            vendorID: VirtioPCITransport.vendorID, deviceID: deviceID, revision: VirtioPCITransport.revision,
            classCode: Self.classCode(for: type), subsystemVendorID: VirtioPCITransport.vendorID, subsystemID: deviceID)
        let bar = VirtioPCITransport.barIndex
        var space = PCIConfigSpace(identity: identity, interruptPin: .intA, interruptLine: interruptLine)
        space.addBAR(bar, PCIBAR(kind: .memory64, size: barSize))
        space.setBARAddress(bar, barAddress)
        @discardableResult
        func capability(
            _ type: VirtioPCICapabilityType, _ offset: UInt64, _ length: UInt64, extra: [UInt8] = [],
            writableMask: [UInt8] = []
        ) -> Int {
            let body = [UInt8(16 + extra.count), type.rawValue, UInt8(bar), 0, 0, 0]
                + littleEndianBytes(UInt32(offset)) + littleEndianBytes(UInt32(length)) + extra
            return space.addCapability(id: Self.vendorCapabilityID, body: body, writableMask: writableMask)
        }
        capability(.commonConfiguration, Self.commonOffset, Self.commonLength)
        capability(.notification, Self.notifyOffset, notifyLength, extra: littleEndianBytes(UInt32(Self.notifyMultiplier)))
        capability(.interruptStatus, Self.isrOffset, Self.isrLength)
        capability(.deviceConfiguration, Self.deviceOffset, deviceLength)
        // cap.bar, cap.offset, cap.length and pci_cfg_data are the driver's to write.
        let window = capability(
            .pciConfigurationAccess, 0, 0, extra: [0, 0, 0, 0],
            writableMask: [0, 0, 0xFF, 0, 0, 0] + Array(repeating: 0xFF, count: 12))
        let table = msix.capability(
            tableBAR: bar, tableOffset: UInt32(Self.tableOffset), pendingBAR: bar, pendingOffset: UInt32(pendingOffset))
        let msixOffset = space.addCapability(id: MSIXTable.capabilityID, body: table.body, writableMask: table.writableMask)
        return (space, window, msixOffset)
    }

    /// PCI_CAP_ID_VNDR: a vendor-specific capability.
    static let vendorCapabilityID: UInt8 = 0x09
}

/// The little-endian bytes of `value`.
func littleEndianBytes(_ value: UInt32) -> [UInt8] {
    (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
}

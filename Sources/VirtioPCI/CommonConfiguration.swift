/// Field offsets of the common configuration structure (VIRTIO 1.2 §4.1.4.3).
enum Common {
    static let deviceFeatureSelect = 0x00
    static let deviceFeature = 0x04
    static let driverFeatureSelect = 0x08
    static let driverFeature = 0x0C
    static let configMSIXVector = 0x10
    static let numQueues = 0x12
    static let deviceStatus = 0x14
    static let configGeneration = 0x15
    static let queueSelect = 0x16
    static let queueSize = 0x18
    static let queueMSIXVector = 0x1A
    static let queueEnable = 0x1C
    static let queueNotifyOff = 0x1E
    static let queueDescriptor = 0x20
    static let queueDriver = 0x28
    static let queueDevice = 0x30

    /// The start and width of the field holding byte `offset` (below 0x38): 32-bit fields up to 0x10, 16-bit ones
    /// but for the two status bytes at 0x14, and the three 64-bit queue addresses from 0x20.
    static func field(containing offset: Int) -> (start: Int, width: Int) {
        switch offset {
        case ..<0x10: (offset & ~3, 4)
        case 0x14, 0x15: (offset, 1)
        case ..<0x20: (offset & ~1, 2)
        default: (offset & ~7, 8)
        }
    }
}

/// A VirtIO device type (VIRTIO 1.2 §5); PCI device IDs are 0x1040 plus this value.
public struct VirtioDeviceType: RawRepresentable, Sendable, Hashable {
    public let rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let network = Self(rawValue: 1)
    public static let block = Self(rawValue: 2)
    public static let console = Self(rawValue: 3)
    public static let entropy = Self(rawValue: 4)
    public static let balloon = Self(rawValue: 5)
    public static let scsi = Self(rawValue: 8)
    public static let gpu = Self(rawValue: 16)
    public static let input = Self(rawValue: 18)
    public static let vsock = Self(rawValue: 19)
    public static let filesystem = Self(rawValue: 26)
}

/// How a device reaches the driver, provided by the transport (MMIO or PCI), which decides what an
/// interrupt is (a line, an MSI-X vector) and where the status lives.
public protocol InterruptSignal: Sendable {
    /// Used-buffer notification: `queue` has new entries in its used ring.
    func signalUsedBuffers(queue: Int)
    /// Configuration-change notification: the device configuration space changed.
    func signalConfigurationChange()
    /// Sets DEVICE_NEEDS_RESET in the device status and sends a configuration-change notification.
    func signalNeedsReset(reason: String)
    /// Asks for another `notify(queue:)` call soon, from the thread that serves the device's notifications: a
    /// device that stops at its work budget with buffers still available calls this, because the driver
    /// already published them and owes no further notification.
    func requestService(queue: Int)
}

/// Why a device could not be activated.
public enum VirtioDeviceError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The driver's set-up is unusable for this device.
    case activation(String)
    /// A queue the device needs is malformed.
    case queue(Int, VirtqueueError)
    /// The driver set DRIVER_OK without FEATURES_OK.
    case featuresNotAccepted

    public var description: String {
        switch self {
        case .activation(let reason): return "cannot activate device: \(reason)"
        case .queue(let index, let error): return "queue \(index): \(error)"
        case .featuresNotAccepted: return "the driver set DRIVER_OK without FEATURES_OK"
        }
    }
}

/// A VirtIO device, independent of the transport that exposes it.
///
/// The transport owns the common registers (status, feature words, queue set-up); the device supplies its
/// identity, features, queue limits and configuration space, and gets its queues once the driver sets
/// DRIVER_OK. A device that finds a driver error after activation calls `InterruptSignal.signalNeedsReset(reason:)`
/// and stops using its queues until `reset()`.
public protocol VirtioDevice {
    /// The device type.
    var deviceType: VirtioDeviceType { get }
    /// Every feature the device offers, device-specific and ring features alike; must include VERSION_1.
    var features: VirtioFeatures { get }
    /// Number of virtqueues.
    var queueCount: Int { get }
    /// Largest size the driver may give queue `queue` (a power of two, at most 32768).
    func maximumQueueSize(_ queue: Int) -> UInt16
    /// Size of the device configuration space in bytes.
    var configurationSize: Int { get }
    /// Reads configuration bytes at `offset` into `buffer`; bytes past the configuration space read as zero.
    func readConfiguration(offset: Int, into buffer: UnsafeMutableRawBufferPointer)
    /// Writes `bytes` to configuration space at `offset`; writes to read-only or absent fields are ignored.
    mutating func writeConfiguration(offset: Int, bytes: UnsafeRawBufferPointer)
    /// Starts the device with the negotiated `features` and its queues, indexed by queue number (nil where
    /// the driver left a queue disabled); `interrupt` stays valid until `reset()`.
    mutating func activate(
        features: VirtioFeatures, queues: [SplitQueue?], interrupt: any InterruptSignal
    ) throws(VirtioDeviceError)
    /// The driver made buffers available on `queue` (an available-buffer notification).
    mutating func notify(queue: Int)
    /// Returns to the initial state: queues dropped, configuration back to its defaults.
    mutating func reset()
    /// A host descriptor the device watches through its `HostEventWatcher` became ready (on an I/O thread).
    mutating func hostEvent(token: UInt32, events: HostEventKind)
    /// Finishes the requests in hand before the VM pauses: when it returns, no request is half done and the device
    /// neither touches guest memory nor signals the driver until its next notification or host event. A device
    /// with asynchronous work in flight (block I/O on workers or an io_uring) completes it here; the default, for
    /// devices that finish each request within `notify` or `hostEvent`, does nothing.
    mutating func quiesce()
}

extension VirtioDevice {
    /// Devices that finish every request within `notify` or `hostEvent` have nothing in flight to finish.
    public mutating func quiesce() {}
}

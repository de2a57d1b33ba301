/// Work a network backend can take over from the guest, or hand to it, as the virtio-net header describes
/// (VIRTIO 1.2 §5.1.6.2): partial checksums and TCP segmentation.
public struct NetOffloads: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8

    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Frames may carry a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) for the other side to complete.
    public static let checksum = Self(rawValue: 1)
    /// Frames may be TCP-over-IPv4 segments larger than the MTU (GSO TCPV4); needs `checksum`.
    public static let tcp4Segmentation = Self(rawValue: 2)
    /// Frames may be TCP-over-IPv6 segments larger than the MTU (GSO TCPV6); needs `checksum`.
    public static let tcp6Segmentation = Self(rawValue: 4)
}

/// Why a backend did not take a frame.
public enum NetBackendError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The backend cannot take the frame now; its descriptor becomes writable when it can.
    case wouldBlock
    /// The backend refused or lost the frame (the reason names the operation and the error).
    case failed(String)

    public var description: String {
        switch self {
        case .wouldBlock: return "the backend cannot take a frame now"
        case .failed(let reason): return reason
        }
    }
}

/// The host end of a virtio-net device: a tap interface, a user-mode network stack, or a test double.
///
/// Frames are Ethernet frames without the frame check sequence. When `offloads` is not empty, every frame in
/// both directions starts with the 12-byte `virtio_net_hdr` (VIRTIO 1.2 §5.1.6, with `num_buffers`), exactly as
/// the guest writes and reads it; otherwise frames are bare and the device adds or strips the header.
///
/// All calls are non-blocking. The device watches `descriptor` through its `HostEventWatcher`: it becomes
/// readable when `receive(into:)` has a frame and writable when `send(_:)` may succeed again after
/// `NetBackendError.wouldBlock`. Readiness is edge-triggered, so the device receives until `receive(into:)`
/// returns nil, or keeps the frame it holds until the guest posts receive buffers.
public protocol NetBackend: AnyObject, Sendable {
    /// The offloads the backend handles; not empty means frames carry the virtio-net header.
    var offloads: NetOffloads { get }
    /// The descriptor to watch for readiness.
    var descriptor: Int32 { get }
    /// Hands one frame (with the header when `offloads` is not empty) to the backend.
    func send(_ frame: UnsafeRawBufferPointer) throws(NetBackendError)
    /// Copies the next waiting frame (with the header when `offloads` is not empty) into `buffer` and returns
    /// its length, at most `buffer.count`: a longer frame is truncated or dropped. Returns nil when none waits.
    func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int?
    /// Sets which offloads frames towards the guest may use: a subset of `offloads` the guest accepted.
    func setReceiveOffloads(_ offloads: NetOffloads)
}

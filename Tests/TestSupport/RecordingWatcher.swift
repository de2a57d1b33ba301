import Synchronization
import Virtio

/// Records the host descriptors a device asks to be watched, with their tokens, as the VMM's I/O thread would.
public final class RecordingWatcher: HostEventWatcher {
    private let watched = Mutex<[Int32: UInt32]>([:])

    public init() {}

    public func watch(_ descriptor: Int32, token: UInt32) throws(HostEventError) { watched.withLock { $0[descriptor] = token } }
    public func unwatch(_ descriptor: Int32) { _ = watched.withLock { $0.removeValue(forKey: descriptor) } }

    /// Every watched descriptor and its token.
    public var descriptors: [Int32: UInt32] { watched.withLock { $0 } }

    /// The descriptor watched with `token`.
    public func descriptor(for token: UInt32) -> Int32? { watched.withLock { $0.first { $0.value == token }?.key } }
}

/// What became ready on a host file descriptor a device watches.
public struct HostEventKind: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Data (or a connection, or end of file) can be read.
    public static let readable = Self(rawValue: 1)
    /// Writing would not block.
    public static let writable = Self(rawValue: 2)
    /// The peer hung up or the descriptor is in error.
    public static let hangup = Self(rawValue: 4)
}

/// Why a host descriptor could not be watched.
public struct HostEventError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) { self.description = description }
}

/// Lets a device watch host file descriptors (a tap, a slirp stack, sockets). The VMM's I/O thread waits on
/// them and calls the device's `hostEvent(token:events:)` under its transport's lock.
///
/// Watching is edge-triggered, for reading and writing at once: after an event the device reads or writes
/// until the call would block, or remembers that work is left (for example when the guest has no receive
/// buffers) and resumes it on the guest's next notification.
public protocol HostEventWatcher: Sendable {
    /// Starts watching `descriptor`, reporting its readiness with `token`.
    func watch(_ descriptor: Int32, token: UInt32) throws(HostEventError)
    /// Stops watching `descriptor`; call before closing it.
    func unwatch(_ descriptor: Int32)
}

extension VirtioDevice {
    /// Devices without host descriptors ignore host events.
    public mutating func hostEvent(token: UInt32, events: HostEventKind) {}
}

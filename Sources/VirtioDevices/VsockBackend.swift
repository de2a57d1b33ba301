/// What a freshly accepted host connection asks for.
public enum VsockConnectRequest: Equatable, Sendable {
    /// The request is not complete yet; ask again when more bytes arrive.
    case incomplete
    /// The host wants to reach the guest's `port`.
    case port(UInt32)
    /// The request is malformed, too long, or the peer left before finishing it: close the connection.
    case invalid
}

/// The host end of virtio-vsock: where connections the guest opens to the host go, and where connections the
/// host opens to the guest come from. The `Vsock` device speaks the guest protocol; a backend only moves host
/// stream sockets in and out.
///
/// Every descriptor a backend returns is a non-blocking, close-on-exec stream socket that the device then owns:
/// it watches, reads, writes and closes it.
public protocol VsockBackend: AnyObject, Sendable {
    /// The listening descriptor to watch: readable while host connections wait to be accepted.
    var listenerDescriptor: Int32 { get }
    /// Accepts one waiting host connection; nil when none waits.
    func accept() -> Int32?
    /// Reads the request at the start of an accepted host connection, consuming no byte past it.
    func readConnectRequest(_ descriptor: Int32) -> VsockConnectRequest
    /// Tells an accepted host connection that the guest took it and sees the host end as port `hostPort`;
    /// false when that could not be written.
    func confirm(_ descriptor: Int32, hostPort: UInt32) -> Bool
    /// Opens a connection to the host service that takes guest connections to host port `port`; nil when none
    /// listens.
    func connect(port: UInt32) -> Int32?
}

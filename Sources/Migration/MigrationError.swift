import Glibc

/// Why a migration could not go on. Each case renders as one line naming the problem.
public enum MigrationError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The address is not `tcp:HOST:PORT` or `unix:PATH`.
    case badAddress(String)
    /// A socket operation failed.
    case socket(String, errno: Int32)
    /// The peer closed the connection.
    case peerClosed
    /// The peer sent nothing for the allowed time.
    case timedOut(String)
    /// The peer sent bytes that are not a valid migration stream.
    case protocolViolation(String)
    /// The peer speaks another version of the stream.
    case versionMismatch(local: UInt32, remote: UInt32)
    /// The peer gave up and said why.
    case aborted(String)

    public var description: String {
        switch self {
        case .badAddress(let text):
            return "'\(text)' is not a migration address; write tcp:HOST:PORT or unix:PATH"
        case .socket(let what, let errno):
            return "\(what): \(String(cString: strerror(errno)))"
        case .peerClosed:
            return "the other side closed the migration connection"
        case .timedOut(let what):
            return "the other side sent nothing for too long (\(what))"
        case .protocolViolation(let what):
            return "the migration stream is invalid: \(what)"
        case .versionMismatch(let local, let remote):
            return "the other side speaks migration stream version \(remote), this Tern \(local); run the same Tern version on both sides"
        case .aborted(let reason):
            return "the other side aborted the migration: \(reason)"
        }
    }
}

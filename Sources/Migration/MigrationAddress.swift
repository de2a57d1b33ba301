/// Where a migration stream goes or comes from: `tcp:HOST:PORT` (HOST may be empty to listen on every address, or
/// a bracketed IPv6 address) or `unix:PATH`.
public enum MigrationAddress: Equatable, Sendable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(path: String)

    public init(parsing text: String) throws(MigrationError) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            // sockaddr_un holds 107 bytes of path and a terminator.
            guard !path.isEmpty, path.utf8.count <= 107 else { throw .badAddress(text) }
            self = .unix(path: path)
            return
        }
        guard text.hasPrefix("tcp:"), let colon = text.lastIndex(of: ":"), colon > text.index(text.startIndex, offsetBy: 3) else {
            throw .badAddress(text)
        }
        var host = String(text[text.index(text.startIndex, offsetBy: 4)..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard let port = UInt16(text[text.index(after: colon)...]), port > 0, !host.contains(where: { $0 == "[" || $0 == "]" }) else {
            throw .badAddress(text)
        }
        self = .tcp(host: host, port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): return host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        }
    }
}

import Glibc

/// Whether anyone listens on a Unix socket file.
enum SocketProbe {
    enum Answer: Equatable {
        case listening
        /// The file exists but nobody accepts: left by a process that died.
        case refused
        case failed(String)
    }

    static func probe(_ path: String) -> Answer {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else { return .failed("the path is longer than the \(capacity - 1) bytes a Unix socket allows") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let connection = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard connection >= 0 else { return .failed(String(cString: strerror(errno))) }
        defer { close(connection) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(connection, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if connected == 0 { return .listening }
        return errno == ECONNREFUSED ? .refused : .failed(String(cString: strerror(errno)))
    }
}

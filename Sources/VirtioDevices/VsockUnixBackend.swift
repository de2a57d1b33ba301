import Glibc

/// Why a vsock backend could not start. The description is one line naming the path and the problem.
public struct VsockBackendError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) { self.description = description }
}

/// The Firecracker-style Unix socket backend.
///
/// Host to guest: a host program connects to `path`, writes `CONNECT <port>\n` and, once the guest accepted,
/// reads `OK <host port>\n`; from then on the socket carries the stream. If the guest refuses, the socket is
/// closed. Guest to host port P: the backend connects to `<path>_<P>`, where a host program listens; when none
/// does, the guest's connection is refused.
public final class UnixSocketVsockBackend: VsockBackend {
    /// Longest `path` taken: `<path>_<port>` must fit in `sun_path` (108 bytes with the terminating NUL).
    public static let maximumPathLength = 107 - suffixLength
    /// Longest connect request line, newline included (`CONNECT 4294967295\n` is 19 bytes).
    static let maximumRequestLength = 32
    /// "_4294967295".
    private static let suffixLength = 11
    /// Non-blocking, close-on-exec stream sockets.
    private static let streamType = Int32(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue)

    /// The listening socket's path.
    public let path: String
    public let listenerDescriptor: Int32
    private let pathBytes: [UInt8]

    /// Listens on `path`. A socket file left there by a process that is gone is replaced; anything else at the
    /// path is an error.
    public init(path: String) throws(VsockBackendError) {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= Self.maximumPathLength, !bytes.contains(0) else {
            throw VsockBackendError(
                "vsock socket path '\(path)' must be 1 to \(Self.maximumPathLength) bytes without NUL")
        }
        try Self.removeStaleSocket(path: path, bytes: bytes)
        let descriptor = socket(AF_UNIX, Self.streamType, 0)
        guard descriptor >= 0 else { throw VsockBackendError("vsock socket '\(path)': socket: \(Self.message(errno))") }
        var (address, length) = Self.address(bytes, port: nil)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
        }
        guard bound == 0, listen(descriptor, SOMAXCONN) == 0 else {
            let error = errno
            close(descriptor)
            throw VsockBackendError("vsock socket '\(path)': cannot listen: \(Self.message(error))")
        }
        self.path = path
        pathBytes = bytes
        listenerDescriptor = descriptor
    }

    deinit {
        close(listenerDescriptor)
        unlink(path)
    }

    public func accept() -> Int32? {
        while true {
            let descriptor = Glibc.accept(listenerDescriptor, nil, nil)
            if descriptor >= 0 {
                guard Self.makeNonBlocking(descriptor) else {
                    close(descriptor)
                    continue
                }
                return descriptor
            }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }

    public func readConnectRequest(_ descriptor: Int32) -> VsockConnectRequest {
        withUnsafeTemporaryAllocation(byteCount: Self.maximumRequestLength, alignment: 1) { buffer in
            let peeked = recv(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_PEEK | MSG_DONTWAIT))
            if peeked < 0 { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? .incomplete : .invalid }
            if peeked == 0 { return .invalid }
            guard let newline = buffer[0..<peeked].firstIndex(of: UInt8(ascii: "\n")) else {
                return peeked == buffer.count ? .invalid : .incomplete
            }
            // Consume the line and nothing after it: the rest is the stream.
            guard recv(descriptor, buffer.baseAddress, newline + 1, Int32(MSG_DONTWAIT)) == newline + 1 else {
                return .invalid
            }
            return Self.parseRequest(UnsafeRawBufferPointer(rebasing: buffer[0..<newline]))
        }
    }

    /// `CONNECT <port>` with a decimal port that fits in 32 bits.
    static func parseRequest(_ line: UnsafeRawBufferPointer) -> VsockConnectRequest {
        let prefix = "CONNECT ".utf8
        guard line.count > prefix.count, line.prefix(prefix.count).elementsEqual(prefix) else { return .invalid }
        var port: UInt64 = 0
        for byte in line.dropFirst(prefix.count) {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return .invalid }
            port = port * 10 + UInt64(byte - UInt8(ascii: "0"))
            guard port <= UInt64(UInt32.max) else { return .invalid }
        }
        return .port(UInt32(port))
    }

    public func confirm(_ descriptor: Int32, hostPort: UInt32) -> Bool {
        withUnsafeTemporaryAllocation(byteCount: 16, alignment: 1) { buffer in
            var length = 0
            for byte in "OK ".utf8 {
                buffer[length] = byte
                length += 1
            }
            length += Self.writeDecimal(hostPort, into: UnsafeMutableRawBufferPointer(rebasing: buffer[length...]))
            buffer[length] = UInt8(ascii: "\n")
            length += 1
            return send(descriptor, buffer.baseAddress, length, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) == length
        }
    }

    public func connect(port: UInt32) -> Int32? {
        let descriptor = socket(AF_UNIX, Self.streamType, 0)
        guard descriptor >= 0 else { return nil }
        var (address, length) = Self.address(pathBytes, port: port)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(descriptor, $0, length) }
        }
        // A Unix stream connect completes at once or fails; EINPROGRESS is taken as pending all the same.
        guard result == 0 || errno == EINPROGRESS else {
            close(descriptor)
            return nil
        }
        return descriptor
    }

    /// `sockaddr_un` for the path, or for `<path>_<port>`.
    private static func address(_ path: [UInt8], port: UInt32?) -> (sockaddr_un, socklen_t) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var length = path.count
        withUnsafeMutableBytes(of: &address.sun_path) { sunPath in
            sunPath.copyBytes(from: path)
            if let port {
                sunPath[length] = UInt8(ascii: "_")
                length += 1
                length += writeDecimal(port, into: UnsafeMutableRawBufferPointer(rebasing: sunPath[length...]))
            }
            sunPath[length] = 0
        }
        return (address, socklen_t(MemoryLayout<sa_family_t>.size + length + 1))
    }

    /// Writes `value` in decimal at the start of `buffer` (which holds at least 10 bytes); returns the digit count.
    private static func writeDecimal(_ value: UInt32, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var digits = 1
        var rest = value / 10
        while rest > 0 {
            digits += 1
            rest /= 10
        }
        var remaining = value
        for position in (0..<digits).reversed() {
            buffer[position] = UInt8(ascii: "0") + UInt8(remaining % 10)
            remaining /= 10
        }
        return digits
    }

    /// Removes a socket file at `path` that nobody listens on any more; refuses anything else there.
    private static func removeStaleSocket(path: String, bytes: [UInt8]) throws(VsockBackendError) {
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        guard status.st_mode & S_IFMT == S_IFSOCK else {
            throw VsockBackendError(
                "vsock socket path '\(path)' exists and is not a socket; remove it or pick another path")
        }
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { throw VsockBackendError("vsock socket '\(path)': socket: \(message(errno))") }
        defer { close(probe) }
        var (address, length) = Self.address(bytes, port: nil)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(probe, $0, length) }
        }
        guard connected != 0 else {
            throw VsockBackendError("vsock socket '\(path)' is in use by another process; pick another path")
        }
        unlink(path)
    }

    private static func makeNonBlocking(_ descriptor: Int32) -> Bool {
        let flags = fcntl(descriptor, F_GETFL)
        return flags >= 0 && fcntl(descriptor, F_SETFL, flags | O_NONBLOCK) == 0
            && fcntl(descriptor, F_SETFD, FD_CLOEXEC) == 0
    }

    private static func message(_ error: Int32) -> String { String(cString: strerror(error)) }
}

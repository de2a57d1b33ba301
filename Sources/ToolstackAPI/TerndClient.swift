import Glibc

/// Where ternd listens.
public enum TerndAddress: Sendable, Equatable {
    case unix(String)
    case tcp(host: String, port: Int)

    /// The socket ternd's systemd unit serves.
    public static let standardSocket = "/run/ternd/ternd.sock"

    /// Parses `unix:PATH` or `http://HOST:PORT`; errors are one line naming the fix.
    public init(parsing text: String) throws(TerndClientError) {
        if text.hasPrefix("unix:"), text.count > 5 {
            self = .unix(String(text.dropFirst(5)))
            return
        }
        if text.hasPrefix("http://") {
            let rest = text.dropFirst(7).split(separator: "/", maxSplits: 1).first.map(String.init) ?? ""
            if let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]), !rest[..<colon].isEmpty {
                self = .tcp(host: String(rest[..<colon].filter { $0 != "[" && $0 != "]" }), port: port)
                return
            }
        }
        throw .usage("--host '\(text)' is not an address; give unix:PATH or http://HOST:PORT")
    }
}

/// Why a request to ternd got no answer: `usage` for a malformed address or setting, `failed` for everything else.
public enum TerndClientError: Error, Sendable, Equatable {
    case usage(String)
    case failed(String)

    public var message: String {
        switch self {
        case .usage(let message), .failed(let message): message
        }
    }
}

/// A blocking HTTP/1.1 client for ternd's API: one request per connection (`Connection: close`).
public struct TerndClient: Sendable {
    public let address: TerndAddress
    /// The bearer token, sent when given.
    public let token: String?

    public init(address: TerndAddress, token: String?) {
        self.address = address
        self.token = token
    }

    /// The token a token file holds: its first line without surrounding blanks (a CRLF or a trailing space
    /// included). ternd and `tern vm` both read token files through this, so that they agree on the token.
    public static func bearerToken(fromFile text: String) -> String {
        let line = text.split(whereSeparator: \.isNewline).first ?? ""
        return String(line.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }

    public struct Answer: Sendable {
        public let status: Int
        public let body: [UInt8]
    }

    /// Sends a request and reads the whole answer, waiting at most `timeout` seconds for it.
    public func send(_ method: String, _ path: String, body: [UInt8]? = nil, timeout: Int = 60) throws(TerndClientError) -> Answer {
        let descriptor = try connect()
        defer { close(descriptor) }
        var time = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        var head = "\(method) \(path) HTTP/1.1\r\nHost: ternd\r\nConnection: close\r\nAccept: application/json\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        let request = Array((head + "\r\n").utf8) + (body ?? [])
        try sendAll(request, on: descriptor, timeout: timeout)
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(descriptor, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            if count < 0 { throw .failed("\(peer): no answer within \(timeout) seconds") }
            if count == 0 { break }
            reply += chunk[..<count]
        }
        return try Self.parse(reply, from: peer)
    }

    /// Sends `bytes` unless the server answers first (as it does to a body it refuses as too large): the answer is
    /// then read as usual.
    private func sendAll(_ bytes: [UInt8], on descriptor: Int32, timeout: Int) throws(TerndClientError) {
        var offset = 0
        while offset < bytes.count {
            var events = pollfd(fd: descriptor, events: Int16(POLLIN | POLLOUT), revents: 0)
            let ready = poll(&events, 1, Int32(timeout * 1000))
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { throw .failed("\(peer): the request was not taken within \(timeout) seconds") }
            if events.revents & Int16(POLLIN) != 0 { return }
            let count = bytes[offset...].withUnsafeBytes {
                Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if count < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw .failed("\(peer): write: \(String(cString: strerror(errno)))")
            }
            offset += count
        }
    }

    private var peer: String {
        switch address {
        case .unix(let path): "ternd at \(path)"
        case .tcp(let host, let port): "ternd at \(host):\(port)"
        }
    }

    private func connect() throws(TerndClientError) -> Int32 {
        switch address {
        case .unix(let path):
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            guard path.utf8.count < MemoryLayout.size(ofValue: address.sun_path) else {
                throw .usage("\(path): too long for a Unix socket path")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
            }
            let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard descriptor >= 0, connected == 0 else {
                let reason = String(cString: strerror(errno))
                close(descriptor)
                throw .failed("cannot reach ternd at \(path): \(reason); is ternd running? (--host unix:PATH or TERN_HOST)")
            }
            return descriptor
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else {
                throw .failed("cannot resolve \(host); give an address ternd listens on")
            }
            defer { freeaddrinfo(list) }
            let descriptor = socket(first.pointee.ai_family, first.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), first.pointee.ai_protocol)
            guard descriptor >= 0, Glibc.connect(descriptor, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
                let reason = String(cString: strerror(errno))
                if descriptor >= 0 { close(descriptor) }
                throw .failed("cannot reach ternd at \(host):\(port): \(reason); is ternd running with --listen?")
            }
            return descriptor
        }
    }

    /// Splits an HTTP/1.1 answer into its status and body (undoing chunked transfer encoding).
    public static func parse(_ reply: [UInt8], from source: String) throws(TerndClientError) -> Answer {
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let end = reply.firstRange(of: separator) else { throw .failed("\(source): the answer is not HTTP") }
        let head = String(decoding: reply[..<end.lowerBound], as: UTF8.self).split(separator: "\r\n")
        let statusWords = head.first?.split(separator: " ") ?? []
        guard statusWords.count >= 2, let status = Int(statusWords[1]) else { throw .failed("\(source): the answer is not HTTP") }
        var body = Array(reply[end.upperBound...])
        let chunked = head.dropFirst().contains { $0.lowercased().hasPrefix("transfer-encoding:") && $0.lowercased().contains("chunked") }
        if chunked { body = dechunk(body) }
        return Answer(status: status, body: body)
    }

    private static func dechunk(_ bytes: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        var index = 0
        while let lineEnd = bytes[index...].firstRange(of: Array("\r\n".utf8)) {
            let sizeText = String(decoding: bytes[index..<lineEnd.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(String(sizeText.filter { !$0.isWhitespace }), radix: 16), size > 0,
                  lineEnd.upperBound + size <= bytes.count else { break }
            output += bytes[lineEnd.upperBound..<(lineEnd.upperBound + size)]
            index = lineEnd.upperBound + size + 2
            if index >= bytes.count { break }
        }
        return output
    }
}

import FoundationEssentials
import Glibc
import VirtioDevices

/// One command on a VM's control socket: a JSON object on one line.
///
/// Commands: `status`; `stop`; `balloon` with `target` (the balloon's size, such as "512M": memory the guest gives
/// back; "0" returns it all); `balloon-statistics` (the guest's last memory statistics and the balloon's size).
public struct ControlRequest: Codable, Sendable, Equatable {
    public var command: String
    public var target: String?

    public init(command: String, target: String? = nil) {
        self.command = command
        self.target = target
    }
}

/// The answer to a `ControlRequest`, also one JSON object on one line.
public struct ControlResponse: Codable, Sendable, Equatable {
    public var ok: Bool
    public var error: String?
    /// `status`: "running" or "stopping".
    public var state: String?
    /// Balloon commands: what the balloon holds and what the guest last reported.
    public var balloon: BalloonReport?

    public init(ok: Bool, error: String? = nil, state: String? = nil, balloon: BalloonReport? = nil) {
        self.ok = ok
        self.error = error
        self.state = state
        self.balloon = balloon
    }

    public static func failure(_ error: String) -> ControlResponse { ControlResponse(ok: false, error: error) }
}

/// The balloon's state as the control socket reports it.
public struct BalloonReport: Codable, Sendable, Equatable {
    /// Bytes the host asked the guest to give back.
    public var targetBytes: UInt64
    /// Bytes the guest says it has given back.
    public var actualBytes: UInt64
    /// The guest's last statistics by name (`free-memory`, `available-memory`, ... in bytes; counters as counts).
    public var statistics: [String: UInt64]

    public init(targetBytes: UInt64, actualBytes: UInt64, statistics: [String: UInt64]) {
        self.targetBytes = targetBytes
        self.actualBytes = actualBytes
        self.statistics = statistics
    }

    enum CodingKeys: String, CodingKey {
        case targetBytes = "target_bytes", actualBytes = "actual_bytes", statistics
    }
}

/// Serves a VM's control socket: a Unix stream socket taking one JSON request per line and answering each with one
/// JSON line, one connection at a time, on its own thread. Requests are capped at 64 KiB and a connection lasts at
/// most `connectionLifetime` seconds, so a misbehaving client cannot hold the VM's controls.
final class ControlServer: @unchecked Sendable {
    static let requestLimit = 64 * 1024
    /// Longest a client may keep its connection, however busy it is.
    static let connectionLifetime: Int = 5
    private let path: String
    private let listener: Int32
    private let handler: @Sendable (ControlRequest) -> ControlResponse
    private let wake = WakeEvent()
    private var thread: pthread_t?

    /// Binds `path` (replacing a stale socket nobody listens on) and starts listening.
    init(path: String, handler: @escaping @Sendable (ControlRequest) -> ControlResponse) throws(MachineError) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else {
            throw MachineError("--api-socket \(path): the path is longer than the \(capacity - 1) bytes a Unix socket allows")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        if Self.isStale(path) { unlink(path) }
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listener >= 0 else { throw MachineError("--api-socket: socket: \(String(cString: strerror(errno)))") }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(listener, 4) == 0 else {
            let reason = String(cString: strerror(errno))
            close(listener)
            throw MachineError("--api-socket \(path): \(reason); remove the file or choose another path")
        }
        self.path = path
        self.listener = listener
        self.handler = handler
    }

    deinit {
        close(listener)
        unlink(path)
    }

    /// Whether `path` is a socket no process listens on any more (left by a VMM that died).
    private static func isStale(_ path: String) -> Bool {
        var status = stat()
        guard lstat(path, &status) == 0, status.st_mode & S_IFMT == S_IFSOCK else { return false }
        let reply = ControlClient.send(ControlRequest(command: "status"), to: path)
        if case .failure(let error) = reply, error.refused { return true }
        return false
    }

    func start() {
        thread = spawnThread { [self] in serve() }
    }

    func stop() {
        wake.signal()
        if let thread { pthread_join(thread, nil) }
        thread = nil
    }

    private func serve() {
        var descriptors = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: wake.descriptor, events: Int16(POLLIN), revents: 0)]
        while true {
            if poll(&descriptors, 2, -1) < 0 {
                if errno == EINTR { continue }
                return
            }
            if descriptors[1].revents != 0 { return }
            guard descriptors[0].revents & Int16(POLLIN) != 0 else { continue }
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { continue }
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            var timeout = timeval(tv_sec: Self.connectionLifetime, tv_usec: 0)
            setsockopt(connection, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            converse(connection)
            close(connection)
        }
    }

    /// Answers each request line until the client closes, sends too much, or its connection's lifetime runs out.
    private func converse(_ connection: Int32) {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        var start = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        while true {
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<newline])
                pending.removeSubrange(...newline)
                guard Self.write(respond(to: line), to: connection) else { return }
            }
            guard pending.count <= Self.requestLimit else {
                _ = Self.write(.failure("request longer than \(Self.requestLimit) bytes"), to: connection)
                return
            }
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let left = Self.connectionLifetime * 1_000_000 - ((now.tv_sec - start.tv_sec) * 1_000_000 + (now.tv_nsec - start.tv_nsec) / 1000)
            guard left > 0 else { return }
            var timeout = timeval(tv_sec: left / 1_000_000, tv_usec: left % 1_000_000)
            setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let count = read(connection, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            pending += chunk[..<count]
        }
    }

    private func respond(to line: [UInt8]) -> ControlResponse {
        do {
            return handler(try JSONDecoder().decode(ControlRequest.self, from: Data(line)))
        } catch {
            return .failure("not a control request: send one JSON object per line, such as {\"command\":\"status\"}")
        }
    }

    private static func write(_ response: ControlResponse, to connection: Int32) -> Bool {
        guard var bytes = try? Array(JSONEncoder().encode(response)) else { return false }
        bytes.append(UInt8(ascii: "\n"))
        var done = 0
        while done < bytes.count {
            let count = bytes[done...].withUnsafeBytes { Glibc.write(connection, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return false }
            done += count
        }
        return true
    }
}

/// Why a control request got no answer.
public struct ControlClientError: Error, Sendable, CustomStringConvertible {
    public let description: String
    /// Nobody listens on the socket (the VM is gone).
    public let refused: Bool
}

/// Sends requests to a VM's control socket.
public enum ControlClient {
    /// Sends one request and waits (up to five seconds) for its answer.
    public static func send(_ request: ControlRequest, to path: String) -> Result<ControlResponse, ControlClientError> {
        func failure(_ what: String, refused: Bool = false) -> Result<ControlResponse, ControlClientError> {
            .failure(ControlClientError(description: "\(path): \(what)", refused: refused))
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else { return failure("the path is longer than a Unix socket allows") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let connection = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard connection >= 0 else { return failure("socket: \(String(cString: strerror(errno)))") }
        defer { close(connection) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(connection, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let refused = errno == ECONNREFUSED
            return failure(refused ? "no VM is listening (it has stopped?)" : String(cString: strerror(errno)), refused: refused)
        }
        guard var bytes = try? Array(JSONEncoder().encode(request)) else { return failure("cannot encode the request") }
        bytes.append(UInt8(ascii: "\n"))
        guard bytes.withUnsafeBytes({ Glibc.write(connection, $0.baseAddress, $0.count) }) == bytes.count else {
            return failure("write: \(String(cString: strerror(errno)))")
        }
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !reply.contains(UInt8(ascii: "\n")) {
            let count = read(connection, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return failure(count == 0 ? "the VM closed the connection" : "no answer in 5 seconds") }
            reply += chunk[..<count]
        }
        guard let response = try? JSONDecoder().decode(ControlResponse.self, from: Data(reply[..<reply.firstIndex(of: UInt8(ascii: "\n"))!])) else {
            return failure("the answer is not a control response")
        }
        return .success(response)
    }
}

extension Machine {
    /// Carries out one control-socket command.
    func handleControl(_ request: ControlRequest) -> ControlResponse {
        switch request.command {
        case "status":
            return ControlResponse(ok: true, state: control.isStopping ? "stopping" : "running")
        case "stop":
            control.stop(.stoppedByHost(reason: "stop requested on the control socket"))
            return ControlResponse(ok: true, state: "stopping")
        case "balloon", "balloon-statistics":
            return balloonControl(request)
        default:
            return .failure("unknown command '\(request.command)'; use status, stop, balloon or balloon-statistics")
        }
    }
}

extension Machine {
    /// `balloon` sets the balloon's size; both commands report it with the guest's last statistics and ask the
    /// guest for fresh ones.
    func balloonControl(_ request: ControlRequest) -> ControlResponse {
        guard let balloon else { return .failure("this VM has no balloon; start it with --balloon") }
        if request.command == "balloon" {
            guard let text = request.target else { return .failure("balloon needs a target size, such as \"256M\"") }
            let target: MemorySize
            do {
                target = text == "0" ? MemorySize(bytes: 0) : try MemorySize(parsing: text)
            } catch {
                return .failure(error.description)
            }
            guard target.bytes <= config.memory.bytes else {
                return .failure("balloon \(target) is larger than the guest's \(config.memory) of RAM")
            }
            balloon.setTarget(bytes: target.bytes)
        }
        balloon.requestStatistics()
        return ControlResponse(ok: true, balloon: BalloonReport(targetBytes: balloon.targetBytes, actualBytes: balloon.actualBytes,
                                                                statistics: balloon.latestStatistics?.named ?? [:]))
    }
}

extension BalloonStatistics {
    /// The reported values by the names the control socket uses (`free-memory`, `swap-in`, ...).
    var named: [String: UInt64] {
        var values: [String: UInt64] = [:]
        for tag in Tag.allCases {
            guard let value = self[tag] else { continue }
            values[String(describing: tag).reduce(into: "") { name, character in
                if character.isUppercase { name += "-" + character.lowercased() } else { name.append(character) }
            }] = value
        }
        return values
    }
}

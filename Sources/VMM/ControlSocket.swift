import FoundationEssentials
import Glibc
import VirtioDevices

/// One command on a VM's control socket: a JSON object on one line.
///
/// Commands: `status` (the state, and the VM's name when it has one); `stop`; `pause`; `resume`; `balloon` with `target` (the balloon's size, such as "512M": memory the guest gives
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
    /// `status` and commands that change it: "running", "paused" or "stopping".
    public var state: String?
    /// `status`: the VM's name, when it has one.
    public var name: String?
    /// Balloon commands: what the balloon holds and what the guest last reported.
    public var balloon: BalloonReport?

    public init(ok: Bool, error: String? = nil, state: String? = nil, name: String? = nil, balloon: BalloonReport? = nil) {
        self.ok = ok
        self.error = error
        self.state = state
        self.name = name
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

/// A VM's control socket: a Unix stream socket taking one JSON request per line and answering each with one JSON
/// line. `init` binds and listens (mode 0600 whatever the umask), so the socket is known to be free before the guest
/// runs; `start` serves it on its own thread, one poll loop over every client with per-client buffers, so a slow or
/// silent client never holds up another. A client may keep its connection `connectionLifetime` seconds and send
/// requests of up to 64 KiB; at most `clientLimit` are served at once (later ones wait in the backlog). Answers go
/// out with MSG_NOSIGNAL: a client that has gone away costs its connection, never the VM.
final class ControlServer: @unchecked Sendable {
    static let requestLimit = 64 * 1024
    /// Longest a client may keep its connection, however busy it is.
    static let connectionLifetime: Int64 = 5
    /// Clients served at once.
    static let clientLimit = 16

    private let path: String
    private let listener: Int32
    /// The socket file's identity, so that only this server's own file is ever removed.
    private let inode: (device: UInt64, number: UInt64)
    private let wake = WakeEvent()
    private var thread: pthread_t?
    private var closed = false

    /// Binds `path` and listens. A socket file nobody listens on (left by a VMM that died) is replaced; a socket a
    /// running VM serves, or any other file, is refused.
    init(path: String) throws(MachineError) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else {
            throw MachineError("--api-socket \(path): the path is longer than the \(capacity - 1) bytes a Unix socket allows")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        try Self.removeIfStale(path)
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard listener >= 0 else { throw MachineError("--api-socket: socket: \(String(cString: strerror(errno)))") }
        // The file takes the socket's mode masked by the umask: 0600 from the start, never wider, then exactly 0600.
        let bound = fchmod(listener, 0o600) == 0 && withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
        guard bound else {
            let reason = String(cString: strerror(errno))
            close(listener)
            throw MachineError("--api-socket \(path): \(reason); choose another path")
        }
        var status = stat()
        guard chmod(path, 0o600) == 0, lstat(path, &status) == 0, listen(listener, 16) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(path)
            close(listener)
            throw MachineError("--api-socket \(path): \(reason)")
        }
        self.path = path
        self.listener = listener
        inode = (UInt64(status.st_dev), UInt64(status.st_ino))
    }

    deinit {
        shutdown()
    }

    /// Refuses a path in use and removes a socket file that nobody listens on.
    private static func removeIfStale(_ path: String) throws(MachineError) {
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        guard status.st_mode & S_IFMT == S_IFSOCK else {
            throw MachineError("--api-socket \(path): the file exists and is not a socket; remove it or choose another path")
        }
        switch ControlClient.connect(to: path) {
        case .success(let connection):
            close(connection)
            throw MachineError("--api-socket \(path): a running VM already serves this socket; stop it or choose another path")
        case .failure(let error) where error.refused:
            unlink(path)
        case .failure(let error):
            throw MachineError("--api-socket \(error.description)")
        }
    }

    /// Starts serving, answering each request with `handler` on the server's thread.
    func start(handler: @escaping @Sendable (ControlRequest) -> ControlResponse) {
        thread = spawnThread(named: "control") { [self] in serve(handler) }
    }

    /// Stops serving, closes the listener and removes the socket file. Idempotent.
    func shutdown() {
        if let thread {
            wake.signal()
            pthread_join(thread, nil)
        }
        thread = nil
        guard !closed else { return }
        closed = true
        close(listener)
        var status = stat()
        if lstat(path, &status) == 0, UInt64(status.st_dev) == inode.device, UInt64(status.st_ino) == inode.number {
            unlink(path)
        }
    }

    /// One connected client: what it has sent that is not yet a whole line, the answers it has not yet taken, and
    /// when it must be gone.
    private struct Client {
        let descriptor: Int32
        let deadline: Int64
        var input: [UInt8] = []
        var output: [UInt8] = []
        /// No more requests are read: the client hung up or sent too much; the connection closes once `output` is out.
        var finished = false
    }

    private func serve(_ handler: @Sendable (ControlRequest) -> ControlResponse) {
        var clients: [Client] = []
        var descriptors: [pollfd] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        defer { for client in clients { close(client.descriptor) } }
        while true {
            let now = monotonicMilliseconds()
            clients.removeAll { client in
                let done = client.deadline <= now || (client.finished && client.output.isEmpty)
                if done { close(client.descriptor) }
                return done
            }
            descriptors.removeAll(keepingCapacity: true)
            descriptors.append(pollfd(fd: wake.descriptor, events: Int16(POLLIN), revents: 0))
            descriptors.append(pollfd(fd: clients.count < Self.clientLimit ? listener : -1, events: Int16(POLLIN), revents: 0))
            for client in clients {
                // A client that does not take its answers is not read from: its buffers stay bounded.
                let events = client.output.isEmpty ? POLLIN : POLLOUT
                descriptors.append(pollfd(fd: client.descriptor, events: Int16(events), revents: 0))
            }
            let timeout = clients.map(\.deadline).min().map { Int32(clamping: max(0, $0 - now)) } ?? -1
            if poll(&descriptors, nfds_t(descriptors.count), timeout) < 0 {
                if errno == EINTR { continue }
                return
            }
            if descriptors[0].revents != 0 { return }
            for index in clients.indices where descriptors[index + 2].revents != 0 {
                if clients[index].output.isEmpty {
                    receive(&clients[index], into: &chunk, handler)
                }
                Self.flush(&clients[index])
            }
            if descriptors[1].revents & Int16(POLLIN) != 0 {
                let connection = accept(listener, nil, nil)
                if connection >= 0 {
                    _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
                    _ = fcntl(connection, F_SETFL, O_NONBLOCK)
                    clients.append(Client(descriptor: connection, deadline: now + Self.connectionLifetime * 1000))
                }
            }
        }
    }

    /// Reads what the client sent and queues an answer for every whole line.
    private func receive(_ client: inout Client, into chunk: inout [UInt8], _ handler: @Sendable (ControlRequest) -> ControlResponse) {
        let count = recv(client.descriptor, &chunk, chunk.count, Int32(MSG_DONTWAIT))
        if count < 0 {
            if errno == EINTR || errno == EAGAIN { return }
            client.finished = true
            client.output.removeAll()
            return
        }
        if count == 0 { client.finished = true }
        client.input += chunk[..<count]
        while let newline = client.input.firstIndex(of: UInt8(ascii: "\n")) {
            Self.append(respond(to: client.input[..<newline], handler), to: &client.output)
            client.input.removeSubrange(...newline)
        }
        if client.input.count > Self.requestLimit {
            Self.append(.failure("request longer than \(Self.requestLimit) bytes"), to: &client.output)
            client.input.removeAll()
            client.finished = true
        }
    }

    private func respond(to line: ArraySlice<UInt8>, _ handler: @Sendable (ControlRequest) -> ControlResponse) -> ControlResponse {
        do {
            return handler(try JSONDecoder().decode(ControlRequest.self, from: Data(line)))
        } catch {
            return .failure("not a control request: send one JSON object per line, such as {\"command\":\"status\"}")
        }
    }

    private static func append(_ response: ControlResponse, to output: inout [UInt8]) {
        guard let bytes = try? JSONEncoder().encode(response) else { return }
        output += bytes
        output.append(UInt8(ascii: "\n"))
    }

    /// Sends what the client has not yet taken, as far as its socket accepts without blocking.
    private static func flush(_ client: inout Client) {
        while !client.output.isEmpty {
            let count = client.output.withUnsafeBytes {
                send(client.descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { return }
                // The client has gone: drop its answers and the connection.
                client.output.removeAll()
                client.finished = true
                return
            }
            client.output.removeFirst(count)
        }
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
        func failure(_ what: String) -> Result<ControlResponse, ControlClientError> {
            .failure(ControlClientError(description: "\(path): \(what)", refused: false))
        }
        let connection: Int32
        switch connect(to: path) {
        case .success(let descriptor): connection = descriptor
        case .failure(let error): return .failure(error)
        }
        defer { close(connection) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(connection, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard var bytes = try? Array(JSONEncoder().encode(request)) else { return failure("cannot encode the request") }
        bytes.append(UInt8(ascii: "\n"))
        guard bytes.withUnsafeBytes({ Glibc.send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else {
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

    /// Connects to the socket at `path`; the caller owns the returned descriptor.
    static func connect(to path: String) -> Result<Int32, ControlClientError> {
        func failure(_ what: String, refused: Bool = false) -> Result<Int32, ControlClientError> {
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
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(connection, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let error = errno
            close(connection)
            let refused = error == ECONNREFUSED
            return failure(refused ? "no VM is listening (it has stopped?)" : String(cString: strerror(error)), refused: refused)
        }
        return .success(connection)
    }
}

extension ControlRequest {
    /// The VMM command this request names.
    func vmmCommand() throws(VMMError) -> VMMCommand {
        switch command {
        case "status": return .status
        case "stop": return .stop
        case "pause": return .pause
        case "resume": return .resume
        case "balloon-statistics": return .balloonStatistics
        case "balloon":
            guard let target else { throw .invalidArgument("balloon needs a target size, such as \"256M\"") }
            guard target != "0" else { return .setBalloonTarget(bytes: 0) }
            do {
                return .setBalloonTarget(bytes: try MemorySize(parsing: target).bytes)
            } catch {
                throw .invalidArgument(error.description)
            }
        default:
            throw .invalidArgument("unknown command '\(command)'; use status, stop, pause, resume, balloon or balloon-statistics")
        }
    }
}

extension ControlResponse {
    /// The answer that reports `reply`.
    init(_ reply: VMMReply) {
        switch reply {
        case .state(let state): self.init(ok: true, state: state.rawValue)
        case .status(let state, let name): self.init(ok: true, state: state.rawValue, name: name)
        case .balloon(let report): self.init(ok: true, balloon: report)
        }
    }
}

extension Machine {
    /// Answers one control-socket request by sending its command to the VMM thread and waiting for the reply.
    func handleControl(_ request: ControlRequest) -> ControlResponse {
        do {
            return ControlResponse(try execute(try request.vmmCommand()))
        } catch {
            return .failure(error.description)
        }
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

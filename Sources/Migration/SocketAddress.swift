import Glibc

/// A resolved migration address: a sockaddr and its family.
struct SocketAddress {
    var storage = sockaddr_storage()
    var length: socklen_t = 0
    let description: String

    init(_ address: MigrationAddress) throws(MigrationError) {
        description = address.description
        switch address {
        case .unix(let path):
            var local = sockaddr_un()
            // The path and its terminating zero must fit sun_path, however the address was made.
            guard !path.isEmpty, path.utf8.count < MemoryLayout.size(ofValue: local.sun_path) else {
                throw .badAddress(address.description)
            }
            local.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &local.sun_path) { bytes in
                for (index, byte) in path.utf8.enumerated() { bytes[index] = byte }
            }
            withUnsafeBytes(of: local) { source in
                withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: source) }
            }
            length = socklen_t(MemoryLayout<sockaddr_un>.size)
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = host.isEmpty ? AI_PASSIVE : 0
            hints.ai_family = AF_UNSPEC
            var results: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &results)
            guard status == 0, let first = results else {
                throw .socket("resolving \(address)", errno: status == EAI_SYSTEM ? errno : EHOSTUNREACH)
            }
            defer { freeaddrinfo(results) }
            withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: first.pointee.ai_addr, count: Int(first.pointee.ai_addrlen))) }
            length = first.pointee.ai_addrlen
        }
    }

    var family: Int32 { Int32(storage.ss_family) }

    private func withAddress<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), length) }
    }

    private func makeSocket() throws(MigrationError) -> Int32 {
        let socket = Glibc.socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socket >= 0 else { throw .socket("creating a socket for \(description)", errno: errno) }
        if family != AF_UNIX {
            var on: Int32 = 1
            setsockopt(socket, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
        }
        return socket
    }

    /// A connected, non-blocking socket, or an error once `timeoutMilliseconds` have passed.
    func connect(timeoutMilliseconds: Int32) throws(MigrationError) -> Int32 {
        let socket = try makeSocket()
        setNonBlocking(socket)
        let result = withAddress { Glibc.connect(socket, $0, $1) }
        if result < 0 && errno != EINPROGRESS {
            let error = errno
            close(socket)
            throw .socket("connecting to \(description)", errno: error)
        }
        if result < 0 {
            var poller = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
            let ready = poll(&poller, 1, timeoutMilliseconds)
            var error: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(socket, SOL_SOCKET, SO_ERROR, &error, &size)
            if ready <= 0 || error != 0 {
                close(socket)
                if ready == 0 { throw .timedOut("connecting to \(description)") }
                throw .socket("connecting to \(description)", errno: error != 0 ? error : errno)
            }
        }
        return socket
    }

    /// A listening socket bound to this address; a Unix socket path must not exist yet.
    func listen() throws(MigrationError) -> Int32 {
        let socket = try makeSocket()
        var on: Int32 = 1
        setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        guard withAddress({ bind(socket, $0, $1) }) == 0, Glibc.listen(socket, 1) == 0 else {
            let error = errno
            close(socket)
            throw .socket("listening on \(description)", errno: error)
        }
        return socket
    }
}

func setNonBlocking(_ descriptor: Int32) {
    _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
}

/// A destination waiting for one migration: binds its address at once (so that a busy address is reported before
/// anything else happens) and accepts one source.
public final class MigrationListener: @unchecked Sendable {
    public let address: MigrationAddress
    let descriptor: Int32

    public init(_ address: MigrationAddress) throws(MigrationError) {
        self.address = address
        descriptor = try SocketAddress(address).listen()
    }

    deinit {
        close(descriptor)
        if case .unix(let path) = address { unlink(path) }
    }

    /// Waits for a source to connect, at most `timeoutMilliseconds` (-1: for ever).
    public func accept(timeoutMilliseconds: Int32 = -1, channelTimeoutMilliseconds: Int32 = 10_000) throws(MigrationError) -> MigrationChannel {
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        while true {
            let ready = poll(&poller, 1, timeoutMilliseconds)
            if ready > 0 { break }
            if ready == 0 { throw .timedOut("waiting for the source to connect") }
            if errno != EINTR { throw .socket("waiting for the source", errno: errno) }
        }
        let connection = Glibc.accept(descriptor, nil, nil)
        guard connection >= 0 else { throw .socket("accepting the source on \(address)", errno: errno) }
        _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
        return MigrationChannel(descriptor: connection, timeoutMilliseconds: channelTimeoutMilliseconds)
    }
}

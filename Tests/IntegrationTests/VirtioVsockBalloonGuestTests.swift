import Foundation
import Glibc
import Synchronization
import Testing
import VMM

/// A Unix stream socket for the vsock tests: a listener at `path`, or a connection to it.
private enum UnixSocket {
    static func address(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        return address
    }

    static func listen(_ path: String) -> Int32 {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = address(path)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        Glibc.listen(descriptor, 1)
        return descriptor
    }

    static func connect(_ path: String) -> Int32 {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = address(path)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if result != 0 { close(descriptor); return -1 }
        return descriptor
    }

    /// Reads up to and including the first newline (at most 256 bytes, 5 seconds).
    static func readLine(_ descriptor: Int32) -> String {
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < 256, read(descriptor, &byte, 1) == 1 {
            line.append(byte)
            if byte == UInt8(ascii: "\n") { break }
        }
        return String(decoding: line, as: UTF8.self)
    }

    static func write(_ descriptor: Int32, _ text: String) {
        _ = Array(text.utf8).withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
    }
}

/// The `vsock` guest over both transports, against host Unix sockets laid out as Firecracker does.
@Suite(.serialized, .timeLimit(.minutes(3))) struct VirtioVsockGuestTests {
    static func socketPath(_ tag: String) -> String { "/tmp/tern-vsock-\(getpid())-\(tag)" }

    /// The guest connects to host port 1234, which Tern turns into a connection to `<uds>_1234`.
    @Test(arguments: VirtioTransportKind.allCases) func guestConnectsToTheHost(transport: VirtioTransportKind) throws {
        let path = Self.socketPath("g\(transport)")
        let listener = UnixSocket.listen("\(path)_1234")
        defer { close(listener); unlink("\(path)_1234") }
        let received = Mutex("")
        let host = Thread {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { return }
            received.withLock { $0 = UnixSocket.readLine(connection) }
            UnixSocket.write(connection, "hello from the host\n")
            var byte: UInt8 = 0
            _ = read(connection, &byte, 1)  // until the guest closes
            close(connection)
        }
        host.start()
        let run = try boot(VMConfig(kernel: Repository.guest("vsock"), virtioTransport: transport,
                                    vsock: VsockSetting(guestCID: 3, socketPath: path)))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        #expect(run.output.contains("vsock: host replied: hello from the host"))
        #expect(received.withLock { $0 } == "hello from the guest\n")
    }

    /// The host connects with "CONNECT 1234", gets "OK <port>", and talks to the guest listening on port 1234.
    @Test(arguments: VirtioTransportKind.allCases) func hostConnectsToTheGuest(transport: VirtioTransportKind) throws {
        let path = Self.socketPath("h\(transport)")
        let console = CapturedOutput()
        let machine = try Machine(config: VMConfig(kernel: Repository.guest("vsock"), cmdline: "mode=listen",
                                                   virtioTransport: transport,
                                                   vsock: VsockSetting(guestCID: 3, socketPath: path)),
                                  console: console)
        let replies = Mutex<[String]>([])
        let host = Thread {
            for _ in 0..<1000 where !console.text.contains("vsock: listening") { usleep(10_000) }
            let connection = UnixSocket.connect(path)
            guard connection >= 0 else { return }
            UnixSocket.write(connection, "CONNECT 1234\n")
            let ok = UnixSocket.readLine(connection)
            UnixSocket.write(connection, "make me loud\n")
            let echo = UnixSocket.readLine(connection)
            replies.withLock { $0 = [ok, echo] }
            close(connection)
        }
        host.start()
        let outcome = machine.run()
        #expect(outcome == .guestExit(0), "output: \(console.text)")
        let answers = replies.withLock { $0 }
        #expect(answers.first?.hasPrefix("OK ") == true, "answers: \(answers)")
        #expect(answers.last == "MAKE ME LOUD\n")
    }
}

/// The `balloon` guest inflates to the host's target and deflates half; the control socket resizes a balloon.
@Suite(.serialized, .timeLimit(.minutes(3))) struct VirtioBalloonGuestTests {
    @Test(arguments: VirtioTransportKind.allCases) func guestInflatesToTheTarget(transport: VirtioTransportKind) throws {
        let run = try boot(VMConfig(kernel: Repository.guest("balloon"), virtioTransport: transport,
                                    balloon: BalloonSetting.parse("target=16M,stats-interval=1")))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        #expect(run.output.contains("balloon: inflated 4096 pages (16 MiB); sampled pages read back as zeros"))
        #expect(run.output.contains("balloon: deflated 2048 pages"))
    }

    @Test func controlSocketSetsTheTarget() throws {
        let socket = "/tmp/tern-api-\(getpid()).sock"
        let machine = try Machine(config: VMConfig(kernel: Repository.guest("console"), cmdline: "expect-input=1",
                                                   virtioConsole: true, balloon: BalloonSetting(), apiSocket: socket),
                                  console: DiscardOutput())
        let answers = Mutex<[ControlResponse]>([])
        let client = Thread {
            for _ in 0..<500 where access(socket, F_OK) != 0 { usleep(10_000) }
            for request in [ControlRequest(command: "balloon", target: "64M"), ControlRequest(command: "balloon-statistics"),
                            ControlRequest(command: "balloon", target: "1T"), ControlRequest(command: "stop")] {
                if case .success(let response) = ControlClient.send(request, to: socket) { answers.withLock { $0.append(response) } }
            }
        }
        client.start()
        let outcome = machine.run()
        #expect(outcome == .stoppedByHost(reason: "stop requested"))
        let responses = answers.withLock { $0 }
        try #require(responses.count == 4, "responses: \(responses)")
        #expect(responses[0].ok && responses[0].balloon?.targetBytes == 64 << 20)
        #expect(responses[1].balloon?.targetBytes == 64 << 20)
        #expect(!responses[2].ok && responses[2].error?.contains("larger than the guest's") == true)
        #expect(responses[3].state == "stopping")
        #expect(access(socket, F_OK) != 0, "the socket is removed when the VM stops")
    }
}

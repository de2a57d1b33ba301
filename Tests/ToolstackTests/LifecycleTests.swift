import Foundation
import Glibc
import Testing
import Toolstack
import ToolstackAPI

@Suite("ternd: VM lifecycle through the API", .serialized, .timeLimit(.minutes(3)))
struct LifecycleTests {
    @Test("16 VMs created and started at once end stopped or crashed with their exit status, with events")
    func severalAtOnce() async throws {
        let ternd = try TerndUnderTest()
        // (name, guest, command line, expected state, expected exit status)
        let cases: [(String, String, String, VMState, Int)] = [
            ("memtouch", "memtouch", "mib=4", .stopped, 0),
            ("ud2-user", "crash", "mode=ud2-user", .stopped, 0x7E),
            ("triple", "crash", "mode=triple", .crashed, 1),
        ] + (1...13).map { ("hello-\($0)", "hello", "", .stopped, 0) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (name, guest, cmdline, _, _) in cases {
                group.addTask {
                    try ternd.create(name, guest: guest, cmdline: cmdline)
                    let answer = try ternd.action(name, "start")
                    #expect(answer.status == 200, "start \(name): \(String(decoding: answer.body, as: UTF8.self))")
                }
            }
            try await group.waitForAll()
        }
        for (name, _, _, state, status) in cases {
            let vm = try ternd.wait(for: name, state: state)
            #expect(vm.exitStatus == status, "\(name): \(ternd.vmmLog(name))")
            #expect(vm.pid == nil)
        }
        let console = try String(contentsOfFile: try ternd.vm("hello-1").consoleLog, encoding: .utf8)
        #expect(console.contains("Hello from a Tern test guest"))

        let events = try EventStream(ternd.socket, after: 0)
        let seen = try events.read(until: { $0.filter { $0.vm == "triple" && $0.state == .crashed }.count == 1 })
        let kinds = seen.filter { $0.vm == "hello-1" }.map { $0.state?.rawValue ?? $0.kind }
        #expect(kinds.first == "defined" && kinds.contains("starting") && kinds.last == "stopped", "\(kinds)")
        #expect(seen.map(\.id) == seen.map(\.id).sorted())
    }

    @Test("stop asks the VM over its control socket; a stopped VM can start again and be deleted")
    func stopStartDelete() async throws {
        let ternd = try TerndUnderTest()
        try ternd.create("long", guest: longRunning.guest, cmdline: longRunning.cmdline, extra: longRunning.extra)
        let started = try ternd.decode(VMInfo.self, try ternd.action("long", "start"))
        #expect(started.state == .running)
        let pid = try #require(started.pid)
        #expect(try ternd.request("DELETE", "/v1/vms/long").status == 409)
        let stopped = try ternd.decode(VMInfo.self, try ternd.request("POST", "/v1/vms/long/stop?grace=10"))
        #expect(stopped.state == .stopped)
        #expect(stopped.exitStatus == 130)
        #expect(hasExited(pid))
        let again = try ternd.decode(VMInfo.self, try ternd.action("long", "start"))
        #expect(again.state == .running && again.pid != nil && again.pid != pid)
        let killed = try ternd.decode(VMInfo.self, try ternd.action("long", "kill"))
        #expect(killed.state == .stopped && killed.exitStatus == 137)
        #expect(try ternd.request("DELETE", "/v1/vms/long").status == 204)
        #expect(try ternd.request("GET", "/v1/vms/long").status == 404)
        #expect(access("\(ternd.stateDirectory)/vms/long", F_OK) != 0)
    }

    @Test("a VM process killed behind ternd's back is crashed, with an event")
    func killedProcessIsCrashed() async throws {
        let ternd = try TerndUnderTest()
        try ternd.create("victim", guest: longRunning.guest, cmdline: longRunning.cmdline, extra: longRunning.extra)
        let pid = try #require(try ternd.decode(VMInfo.self, try ternd.action("victim", "start")).pid)
        let events = try EventStream(ternd.socket, after: nil)
        kill(pid_t(pid), SIGKILL)
        let seen = try events.read(until: { $0.contains { $0.vm == "victim" && $0.state == .crashed } })
        #expect(seen.first { $0.vm == "victim" && $0.state == .crashed }?.exitStatus == 128 + Int(SIGKILL))
        let vm = try ternd.wait(for: "victim", state: .crashed)
        #expect(vm.exitStatus == 137)
    }

    @Test("a client resuming the event stream from far back gets every stored event, past the store's first page")
    func resumeReplaysEveryStoredEvent() throws {
        let ternd = try TerndUnderTest()
        // Written behind ternd's back, so that only the replay of the stored log can deliver them.
        let store = try Store(path: "\(ternd.stateDirectory)/ternd.sqlite")
        _ = try store.create(VMRecord(name: "busy", config: #"{"kernel":"/k"}"#, cpuPolicy: .shared, autostart: false))
        for round in 1...1100 {
            _ = try store.transition("busy", Transition(to: round % 2 == 0 ? .defined : .stopped, message: "round \(round)"))
        }
        let events = try EventStream(ternd.socket, after: 0)
        let seen = try events.read(until: { $0.count >= 1101 })
        #expect(seen.map(\.id) == Array(1...1101))
        #expect(seen.last?.message == "round 1100")
    }

    @Test("pause and resume go to the VM's control socket; a refusal is a 409 carrying the VM's answer")
    func pauseAndResume() async throws {
        let ternd = try TerndUnderTest()
        try ternd.create("p", guest: longRunning.guest, cmdline: longRunning.cmdline, extra: longRunning.extra)
        #expect(try ternd.action("p", "pause").status == 409)  // defined: nothing to pause
        _ = try ternd.action("p", "start")
        let pause = try ternd.action("p", "pause")
        if pause.status == 200 {
            #expect(try ternd.vm("p").state == .paused)
            #expect(try ternd.action("p", "pause").status == 409)
            #expect(try ternd.decode(VMInfo.self, try ternd.action("p", "resume")).state == .running)
        } else {
            #expect(pause.status == 409)
            let error = try ternd.decode(APIError.self, pause)
            #expect(error.error.contains("refused pause"), "\(error.error)")
            #expect(try ternd.vm("p").state == .running)
        }
        _ = try ternd.action("p", "kill")
    }
}

/// A `GET /v1/events` stream read from its own connection.
final class EventStream {
    private let descriptor: Int32
    private var buffer: [UInt8] = []

    /// Opens the stream; `after` replays the stored events after that id first.
    init(_ socket: String, after: Int64?) throws {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in socket.utf8.enumerated() { raw[index] = byte }
        }
        descriptor = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(connected == 0)
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let query = after.map { "?after=\($0)" } ?? ""
        let request = Array("GET /v1/events\(query) HTTP/1.1\r\nHost: ternd\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, 0) }
        // The headers arrive at once; waiting for them makes sure the subscription is in place.
        let headersArrived = eventually(within: 10) {
            fill()
            return String(decoding: buffer, as: UTF8.self).contains("\r\n\r\n")
        }
        try #require(headersArrived, "no answer to GET /v1/events")
        #expect(String(decoding: buffer, as: UTF8.self).contains("text/event-stream"))
    }

    deinit {
        close(descriptor)
    }

    /// Reads events until `done` holds for those read so far (within 30 s); returns them.
    func read(until done: ([VMEvent]) -> Bool) throws -> [VMEvent] {
        var events: [VMEvent] = []
        let finished = eventually(within: 30) {
            fill()
            events = parse()
            return done(events)
        }
        try #require(finished, "events so far: \(events.map { "\($0.vm) \($0.kind) \($0.state?.rawValue ?? "")" })")
        return events
    }

    private func fill() {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let count = recv(descriptor, &chunk, chunk.count, Int32(MSG_DONTWAIT))
        if count > 0 { buffer += chunk[..<count] }
    }

    private func parse() -> [VMEvent] {
        String(decoding: buffer, as: UTF8.self).split(separator: "\n").compactMap { line in
            guard line.hasPrefix("data: ") else { return nil }
            return try? JSONDecoder().decode(VMEvent.self, from: Data(line.dropFirst(6).utf8))
        }
    }
}

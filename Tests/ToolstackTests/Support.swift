import Foundation
import Glibc
import Testing
import ToolstackAPI

/// The repository and its build outputs, found from this file's location.
enum Repository {
    static let root: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path
    }()

    /// A test guest built by `make -C Guests`; fails the test when it was not built.
    static func guest(_ name: String) throws -> String {
        let path = "\(root)/Guests/build/\(name).elf"
        try #require(access(path, R_OK) == 0, "\(path) is missing: run `make -C Guests` first")
        return path
    }

    /// An executable `swift build` produced (`tern`, `ternd`).
    static func binary(_ name: String) throws -> String {
        for configuration in ["debug", "release"] {
            let path = "\(root)/.build/\(configuration)/\(name)"
            if access(path, X_OK) == 0 { return path }
        }
        try #require(Bool(false), "no \(name) executable under \(root)/.build: run `swift build` first")
        return ""
    }
}

/// A temporary directory, removed with everything in it when the value goes.
final class TemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/ternd-test-XXXXXX".utf8CString)
        path = String(cString: mkdtemp(&template)!)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Spawns `arguments` with stdin from /dev/null and stdout and stderr appended to `log`.
func spawn(_ arguments: [String], log: String) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    var argv = arguments.map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, arguments[0], &actions, nil, &argv, environ)
    try #require(result == 0, "cannot run \(arguments[0]): \(String(cString: strerror(result)))")
    return pid
}

/// Runs a command to completion, returning its exit status and stdout.
func run(_ arguments: [String], environment: [String: String] = [:], directory: String? = nil) throws -> (status: Int32, output: String) {
    let process = Process()
    if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
    process.executableURL = URL(fileURLWithPath: arguments[0])
    process.arguments = Array(arguments.dropFirst())
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// True once `condition` holds; false when `seconds` pass first.
func eventually(within seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        usleep(50_000)
    }
    return try condition()
}

/// A ternd for one test: its own state directory and socket; killed (with every VM it started) when the test ends.
/// Requests may come from several tasks; `start`, `kill9` and `stopEverything` only from the test's own.
final class TerndUnderTest: @unchecked Sendable {
    let directory = TemporaryDirectory()
    var stateDirectory: String { "\(directory.path)/state" }
    var socket: String { "\(directory.path)/ternd.sock" }
    var log: String { "\(directory.path)/ternd.log" }
    private(set) var pid: pid_t = 0
    let extraArguments: [String]

    init(extraArguments: [String] = []) throws {
        self.extraArguments = extraArguments
        try start()
    }

    deinit {
        stopEverything()
    }

    var client: TerndClient { TerndClient(address: .unix(socket), token: nil) }

    /// Starts ternd and waits for its socket to answer.
    func start() throws {
        pid = try spawn([try Repository.binary("ternd"), "--state-dir", stateDirectory, "--socket", socket, "-v"] + extraArguments, log: log)
        let up = eventually(within: 30) { (try? client.send("GET", "/v1/host"))?.status == 200 }
        try #require(up, "ternd did not answer within 30 s: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
    }

    /// kill -9, and reap it.
    func kill9() {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        pid = 0
    }

    /// Kills ternd and every VM process still recorded as running (the VMs outlive ternd by design).
    func stopEverything() {
        let vms = (try? list()) ?? []
        if pid != 0 { kill9() }
        for vm in vms { if let pid = vm.pid { kill(pid_t(pid), SIGKILL) } }
    }

    // MARK: API helpers

    func request(_ method: String, _ path: String, json: String? = nil) throws -> TerndClient.Answer {
        try client.send(method, path, body: json.map { Array($0.utf8) })
    }

    func decode<T: Decodable>(_ type: T.Type, _ answer: TerndClient.Answer) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(answer.body))
    }

    func list() throws -> [VMInfo] {
        try decode(VMList.self, try request("GET", "/v1/vms")).vms
    }

    func vm(_ name: String) throws -> VMInfo {
        let answer = try request("GET", "/v1/vms/\(name)")
        try #require(answer.status == 200, "GET \(name): \(answer.status) \(String(decoding: answer.body, as: UTF8.self))")
        return try decode(VMInfo.self, answer)
    }

    /// Creates a VM from a guest and a command line; expects 201.
    @discardableResult
    func create(_ name: String, guest: String, cmdline: String = "", extra: String = "") throws -> VMInfo {
        let config = #"{"kernel": "\#(try Repository.guest(guest))", "cmdline": "\#(cmdline)", "memory": "64M"\#(extra)}"#
        let answer = try request("POST", "/v1/vms", json: #"{"name": "\#(name)", "config": \#(config)}"#)
        try #require(answer.status == 201, "create \(name): \(answer.status) \(String(decoding: answer.body, as: UTF8.self))")
        return try decode(VMInfo.self, answer)
    }

    func action(_ name: String, _ action: String) throws -> TerndClient.Answer {
        try request("POST", "/v1/vms/\(name)/\(action)")
    }

    /// Waits until the VM is in `state`; returns it then.
    func wait(for name: String, state: VMState, within seconds: Double = 30) throws -> VMInfo {
        var last: VMInfo?
        let reached = try eventually(within: seconds) {
            last = try vm(name)
            return last?.state == state
        }
        try #require(reached, "\(name) is \(last?.state.rawValue ?? "?"), not \(state.rawValue), after \(seconds) s; vmm.log: \(vmmLog(name))")
        return last!
    }

    func vmmLog(_ name: String) -> String {
        (try? String(contentsOfFile: "\(stateDirectory)/vms/\(name)/vmm.log", encoding: .utf8)) ?? ""
    }
}

/// The `console` guest waiting for input that never comes: it runs until it is stopped.
let longRunning = (guest: "console", cmdline: "expect-input=1 timeout=100000000000000000", extra: #", "virtio_console": true"#)

/// The process has exited: it is gone, or a zombie nobody has reaped yet (a re-adopted VM's parent is init).
func hasExited(_ pid: Int) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return true }
    return stat[stat.index(close, offsetBy: 2)] == "Z"
}

import Glibc
import Testing
import VMM

/// Paths of the repository and its build outputs, found from this file's location.
enum Repository {
    static let root: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path
    }()

    /// A test guest built by `make -C Guests`. Fails the test (not skips it) when the guest was not built.
    static func guest(_ name: String) throws -> String {
        let path = "\(root)/Guests/build/\(name).elf"
        try #require(access(path, R_OK) == 0, "\(path) is missing: run `make -C Guests` first")
        return path
    }

    /// The `tern` executable that `swift build` produced for these tests, or the one `TERN_BINARY` names (to run
    /// the tests against another build, such as the one before a fix).
    static func ternBinary() throws -> String {
        if let override = getenv("TERN_BINARY") { return String(cString: override) }
        for configuration in ["debug", "release"] {
            let path = "\(root)/.build/\(configuration)/tern"
            if access(path, X_OK) == 0 { return path }
        }
        try #require(Bool(false), "no tern executable under \(root)/.build: run `swift build` first")
        return ""
    }
}

/// A finished guest run: what it printed and how it ended.
struct GuestRun {
    let output: String
    let outcome: MachineOutcome
}

/// Boots `config` through the library and waits for it to stop.
func boot(_ config: VMConfig, hooks: MachineHooks = MachineHooks()) throws -> GuestRun {
    let console = CapturedOutput()
    let machine = try Machine(config: config, console: console)
    let outcome = machine.run(hooks: hooks)
    return GuestRun(output: console.text, outcome: outcome)
}

/// The result of running a command to completion.
struct ProcessResult {
    let status: Int32
    let stdout: String
    let stderr: String
}

/// Runs `arguments` with stdin from /dev/null, capturing stdout and stderr.
func runProcess(_ arguments: [String]) throws -> ProcessResult {
    var outPipe: [Int32] = [0, 0]
    var errPipe: [Int32] = [0, 0]
    try #require(pipe(&outPipe) == 0 && pipe(&errPipe) == 0)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
    posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
    posix_spawn_file_actions_addclose(&actions, outPipe[0])
    posix_spawn_file_actions_addclose(&actions, errPipe[0])
    defer { posix_spawn_file_actions_destroy(&actions) }
    var argv = arguments.map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, arguments[0], &actions, nil, &argv, environ)
    close(outPipe[1])
    close(errPipe[1])
    try #require(spawned == 0, "cannot run \(arguments[0])")
    let stdout = drain(outPipe[0])
    let stderr = drain(errPipe[0])
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    let exitStatus = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    return ProcessResult(status: exitStatus, stdout: stdout, stderr: stderr)
}

private func drain(_ fd: Int32) -> String {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = read(fd, &chunk, chunk.count)
        if count <= 0 { break }
        bytes.append(contentsOf: chunk[0..<count])
    }
    close(fd)
    return String(decoding: bytes, as: UTF8.self)
}

func writeFile(_ path: String, _ text: String) -> Bool {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    return write(fd, bytes, bytes.count) == bytes.count
}

func unlinkFile(_ path: String) -> Bool {
    unlink(path) == 0
}

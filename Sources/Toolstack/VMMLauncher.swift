import CPidFD
import Glibc

/// Where one VM's files live under the state directory: `vms/NAME/{config.json,control.sock,console.log,vmm.log}`.
public struct VMPaths: Sendable, Equatable {
    public let directory: String

    public init(stateDirectory: String, name: String) {
        directory = "\(stateDirectory)/vms/\(name)"
    }

    /// The settings `tern run --config` reads, written at each start.
    public var config: String { "\(directory)/config.json" }
    /// The VM's control socket (`tern run --api-socket`).
    public var controlSocket: String { "\(directory)/control.sock" }
    /// The guest's serial console output.
    public var consoleLog: String { "\(directory)/console.log" }
    /// What `tern run` itself prints: its errors and crash reports.
    public var vmmLog: String { "\(directory)/vmm.log" }
}

/// Starts `tern run` processes: each in its own session (a terminal's Ctrl-C or ternd's own end never reaches it),
/// with default signal handling, stdin from /dev/null, stdout and stderr appended to its `vmm.log`, and no other
/// descriptor of ternd's.
struct VMMLauncher: Sendable {
    /// The `tern` executable.
    let tern: String

    /// Spawns `tern run` for the VM whose files are at `paths`; the config file must already be written.
    func launch(_ paths: VMPaths) throws(ToolstackError) -> Int32 {
        let arguments = [tern, "run", "--config", paths.config, "--api-socket", paths.controlSocket,
                         "--console", "file:\(paths.consoleLog)"]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, paths.vmmLog, O_WRONLY | O_CREAT | O_APPEND, 0o640)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        cpidfd_spawn_closefrom(&actions, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        var allSignals = sigset_t()
        sigemptyset(&noSignals)
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, cpidfd_spawn_setsid | Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, tern, &actions, &attributes, &argv, environ)
        guard result == 0 else {
            throw .failure(message: "cannot start \(tern): \(String(cString: strerror(result))); give ternd --tern PATH")
        }
        return pid
    }
}

import ToolstackAPI

/// How a VM's `tern run` process ended, and the state that makes the VM.
enum ExitOutcome: Sendable, Equatable {
    /// Exited with this status (`tern run`'s table: the guest's byte, 0, 1 for a VMM failure, 2 for usage, 130).
    case exited(Int32)
    /// Killed by this signal; `byHost` when ternd sent it (`kill`, or a stop whose grace period ran out).
    case signaled(Int32, byHost: Bool)
    /// The process was not ternd's child (re-adopted), so its status is unknown; `socketLeft` when its control
    /// socket file was left behind, which `tern run` removes on every orderly exit.
    case unobserved(socketLeft: Bool)

    /// Decodes a `waitpid` status.
    init(waitStatus: Int32, byHost: Bool) {
        let signal = waitStatus & 0x7F
        self = signal == 0 ? .exited((waitStatus >> 8) & 0xFF) : .signaled(signal, byHost: byHost)
    }

    /// The exit status as shells report it: the code, or 128 + the signal.
    var exitStatus: Int? {
        switch self {
        case .exited(let code): Int(code)
        case .signaled(let signal, _): 128 + Int(signal)
        case .unobserved: nil
        }
    }

    /// A guest that ends by itself, or a VM the host stopped or killed, is `stopped`; a VMM failure (status 1 or 2),
    /// a signal nobody at ternd sent, or a process that vanished leaving its socket is `crashed`.
    var state: VMState {
        switch self {
        case .exited(let code): code == 1 || code == 2 ? .crashed : .stopped
        case .signaled(_, let byHost): byHost ? .stopped : .crashed
        case .unobserved(let socketLeft): socketLeft ? .crashed : .stopped
        }
    }

    var description: String {
        switch self {
        case .exited(let code): "tern run exited with status \(code)"
        case .signaled(let signal, let byHost): "tern run was killed by signal \(signal)\(byHost ? " sent by ternd" : "")"
        case .unobserved(let socketLeft):
            "tern run ended while ternd was not watching\(socketLeft ? ", leaving its control socket" : "")"
        }
    }
}

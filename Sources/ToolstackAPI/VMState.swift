/// Where a VM is in its life: defined → starting → running ⇄ paused → stopping → stopped | crashed.
public enum VMState: String, Codable, Sendable, CaseIterable {
    /// Created and never started.
    case defined
    /// Its `tern run` process is being spawned; the control socket does not answer yet.
    case starting
    case running
    case paused
    /// A stop was asked for; the process has not exited yet.
    case stopping
    /// The process exited on its own (the guest ended) or by the host's choice.
    case stopped
    /// The process was killed by a signal it was not sent by ternd, or the VMM failed (exit status 1 or 2).
    case crashed

    /// A `tern run` process exists for the VM in this state.
    public var hasProcess: Bool {
        switch self {
        case .starting, .running, .paused, .stopping: true
        case .defined, .stopped, .crashed: false
        }
    }
}

/// How a VM's vCPUs share the host's cores.
public enum CPUPolicy: String, Codable, Sendable, CaseIterable {
    /// vCPUs float over the pool's shared cores.
    case shared
    /// Each vCPU gets a core no other VM's vCPU gets.
    case exclusive
}

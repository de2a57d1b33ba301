/// An action on a running VM, carried out on the VMM thread. The control socket, the CLI (through the socket) and
/// library callers (`Machine.execute(_:)`) all send these; none of them touches the machine's parts itself.
public enum VMMCommand: Sendable, Equatable {
    /// Reports the run state and the VM's name.
    case status
    /// Ends the VM (a host stop): vCPUs leave the guest, disks are flushed. Accepted running or paused.
    case stop
    /// Every vCPU out of KVM_RUN and every I/O thread quiescent, with no device request half done; the guest's
    /// clock is held until `resume`.
    case pause
    /// Lets a paused VM run on from where it stopped.
    case resume
    /// Asks the guest to give back memory until the balloon holds `bytes` (0 returns it all).
    case setBalloonTarget(bytes: UInt64)
    /// Reports the balloon and the guest's last memory statistics, and asks the guest for fresh ones.
    case balloonStatistics
}

/// Where a VM is in its life.
public enum RunState: String, Sendable, Equatable, Codable {
    case running
    case paused
    /// Stopping or stopped: it will not run again.
    case stopping
}

/// What the VM answered to a `VMMCommand`.
public enum VMMReply: Sendable, Equatable {
    /// The command took effect; the VM is now in this state.
    case state(RunState)
    /// `status`: the state and the VM's name.
    case status(RunState, name: String?)
    /// Balloon commands: the balloon's size and the guest's statistics.
    case balloon(BalloonReport)
}

/// Why a `VMMCommand` was refused or failed. The VM's state is unchanged unless the case says otherwise.
public enum VMMError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The command needs another run state: pause while paused, resume while running, balloon while paused.
    case wrongState(command: String, state: RunState)
    /// The VM has stopped; nothing more can be done with it.
    case stopped
    /// An I/O thread did not finish its work in hand in time; the VM keeps running.
    case ioThreadUnresponsive(name: String, milliseconds: Int)
    /// A vCPU did not leave the guest and answer in time; the VM keeps running.
    case vcpuUnresponsive(index: Int, milliseconds: Int)
    /// KVM refused an operation on a vCPU or the VM.
    case hypervisor(String)
    /// The VM has no such device (a balloon command without `--balloon`).
    case noSuchDevice(String)
    /// An argument is out of range.
    case invalidArgument(String)
    /// The VMM thread did not answer in time.
    case timedOut(command: String)

    public var description: String {
        switch self {
        case .wrongState(let command, let state): "cannot \(command) a VM that is \(state.rawValue)"
        case .stopped: "the VM has stopped"
        case .ioThreadUnresponsive(let name, let milliseconds):
            "I/O thread \(name) did not finish its work within \(milliseconds) ms; the VM keeps running"
        case .vcpuUnresponsive(let index, let milliseconds):
            "vCPU \(index) did not leave the guest within \(milliseconds) ms; the VM keeps running"
        case .hypervisor(let reason): reason
        case .noSuchDevice(let what): what
        case .invalidArgument(let reason): reason
        case .timedOut(let command): "the VM did not answer '\(command)' in time"
        }
    }
}

extension VMMCommand {
    /// The command's name on the control socket.
    public var name: String {
        switch self {
        case .status: "status"
        case .stop: "stop"
        case .pause: "pause"
        case .resume: "resume"
        case .setBalloonTarget: "balloon"
        case .balloonStatistics: "balloon-statistics"
        }
    }
}

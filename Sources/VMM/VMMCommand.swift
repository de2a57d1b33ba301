/// An action on a running VM, carried out on the VMM thread. The control socket, the CLI (through the socket) and
/// library callers (`Machine.execute(_:)`) all send these; none of them touches the machine's parts itself.
public enum VMMCommand: Sendable, Equatable {
    /// Reports the run state and the VM's name.
    case status
    /// Ends the VM (a host stop): vCPUs leave the guest, disks are flushed.
    case stop
    /// Asks the guest to give back memory until the balloon holds `bytes` (0 returns it all).
    case setBalloonTarget(bytes: UInt64)
    /// Reports the balloon and the guest's last memory statistics, and asks the guest for fresh ones.
    case balloonStatistics
}

/// Where a VM is in its life.
public enum RunState: String, Sendable, Equatable, Codable {
    case running
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
    /// The VM has stopped; nothing more can be done with it.
    case stopped
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
        case .stopped: "the VM has stopped"
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
        case .setBalloonTarget: "balloon"
        case .balloonStatistics: "balloon-statistics"
        }
    }
}

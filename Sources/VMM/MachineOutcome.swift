/// How a VM ended.
public enum MachineOutcome: Equatable, Sendable, CustomStringConvertible {
    /// The guest wrote `status` to the debug-exit port.
    case guestExit(UInt8)
    /// The guest reset the machine (i8042 command 0xFE or a KVM reset event); Tern treats that as a clean stop.
    case reset
    /// The guest powered off.
    case powerOff
    /// The guest broke in a way the VMM can describe but not continue: a triple fault, an instruction KVM
    /// could not emulate. The report names the vCPU, exit reason, RIP, CPU mode and instruction bytes.
    case crashed(report: String)
    /// The host asked the VM to stop: a signal to the VMM or the console escape.
    case stoppedByHost(reason: String)
    /// The VMM itself failed while running the guest.
    case failed(String)

    /// Exit status of `tern run` for this outcome.
    public var exitStatus: Int32 {
        switch self {
        case .guestExit(let status): return Int32(status)
        case .reset, .powerOff: return 0
        case .crashed, .failed: return 1
        case .stoppedByHost: return 130
        }
    }

    public var description: String {
        switch self {
        case .guestExit(let status): return "the guest exited with status \(status)"
        case .reset: return "the guest reset the machine"
        case .powerOff: return "the guest powered off"
        case .crashed(let report): return report
        case .stoppedByHost(let reason): return "stopped: \(reason)"
        case .failed(let reason): return reason
        }
    }
}

/// A VM that could not be built. The description is one line naming the problem and the fix.
public struct MachineError: Error, CustomStringConvertible {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }
}

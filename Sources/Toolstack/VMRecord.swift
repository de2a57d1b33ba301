import ToolstackAPI

/// What the store keeps of one VM: its definition, where it is in its life, and the process running it.
public struct VMRecord: Sendable, Equatable {
    public var name: String
    /// The settings as JSON text, the object `tern run --config` reads.
    public var config: String
    public var cpuPolicy: CPUPolicy
    public var autostart: Bool
    public var state: VMState
    public var exitStatus: Int?
    /// The `tern run` process while `state.hasProcess`.
    public var process: ProcessIdentity?

    public init(name: String, config: String, cpuPolicy: CPUPolicy, autostart: Bool, state: VMState = .defined,
                exitStatus: Int? = nil, process: ProcessIdentity? = nil) {
        self.name = name
        self.config = config
        self.cpuPolicy = cpuPolicy
        self.autostart = autostart
        self.state = state
        self.exitStatus = exitStatus
        self.process = process
    }
}

/// A state change to record: the new state, how the process ended, and the process now running the VM.
public struct Transition: Sendable, Equatable {
    public var state: VMState
    public var exitStatus: Int?
    public var process: ProcessIdentity?
    /// One line for the event log.
    public var message: String

    public init(to state: VMState, exitStatus: Int? = nil, process: ProcessIdentity? = nil, message: String) {
        self.state = state
        self.exitStatus = exitStatus
        self.process = process
        self.message = message
    }
}

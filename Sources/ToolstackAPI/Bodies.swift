/// `POST /v1/vms`: a VM definition.
public struct CreateVMRequest: Codable, Sendable, Equatable {
    /// Letters, digits, '-', '_' and '.', at most 64.
    public var name: String
    /// The VM's settings: the JSON object `tern run --config` reads, with absolute paths.
    public var config: JSONValue
    public var cpuPolicy: CPUPolicy?
    /// Start the VM whenever ternd starts.
    public var autostart: Bool?

    public init(name: String, config: JSONValue, cpuPolicy: CPUPolicy? = nil, autostart: Bool? = nil) {
        self.name = name
        self.config = config
        self.cpuPolicy = cpuPolicy
        self.autostart = autostart
    }

    enum CodingKeys: String, CodingKey {
        case name, config, autostart, cpuPolicy = "cpu_policy"
    }
}

/// A VM as the API reports it.
public struct VMInfo: Codable, Sendable, Equatable {
    public var name: String
    public var state: VMState
    /// How its last process ended: the exit code, or 128 + the signal number; nil while it runs, before its first
    /// run, and for a re-adopted process whose end ternd could not observe.
    public var exitStatus: Int?
    public var cpuPolicy: CPUPolicy
    public var autostart: Bool
    /// The `tern run` process, while there is one.
    public var pid: Int?
    public var config: JSONValue
    /// The VM's serial console output on the host.
    public var consoleLog: String

    public init(name: String, state: VMState, exitStatus: Int?, cpuPolicy: CPUPolicy, autostart: Bool, pid: Int?,
                config: JSONValue, consoleLog: String) {
        self.name = name
        self.state = state
        self.exitStatus = exitStatus
        self.cpuPolicy = cpuPolicy
        self.autostart = autostart
        self.pid = pid
        self.config = config
        self.consoleLog = consoleLog
    }

    enum CodingKeys: String, CodingKey {
        case name, state, autostart, pid, config
        case exitStatus = "exit_status", cpuPolicy = "cpu_policy", consoleLog = "console_log"
    }

    /// Encodes `exit_status` and `pid` as null rather than leaving them out, so that every VM has every key.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(state, forKey: .state)
        try container.encode(exitStatus, forKey: .exitStatus)
        try container.encode(cpuPolicy, forKey: .cpuPolicy)
        try container.encode(autostart, forKey: .autostart)
        try container.encode(pid, forKey: .pid)
        try container.encode(config, forKey: .config)
        try container.encode(consoleLog, forKey: .consoleLog)
    }
}

/// `GET /v1/vms`.
public struct VMList: Codable, Sendable, Equatable {
    public var vms: [VMInfo]

    public init(vms: [VMInfo]) { self.vms = vms }
}

/// One thing that happened to a VM, as stored and as sent on `GET /v1/events`.
public struct VMEvent: Codable, Sendable, Equatable {
    /// Increases with every event.
    public var id: Int64
    /// Seconds since 1970.
    public var time: Double
    public var vm: String
    /// `created`, `deleted` or `state`.
    public var kind: String
    /// The VM's state after the event.
    public var state: VMState?
    public var exitStatus: Int?
    public var message: String

    public init(id: Int64, time: Double, vm: String, kind: String, state: VMState?, exitStatus: Int?, message: String) {
        self.id = id
        self.time = time
        self.vm = vm
        self.kind = kind
        self.state = state
        self.exitStatus = exitStatus
        self.message = message
    }

    enum CodingKeys: String, CodingKey {
        case id, time, vm, kind, state, message, exitStatus = "exit_status"
    }
}

/// `GET /v1/host`.
public struct HostInfo: Codable, Sendable, Equatable {
    /// Online host cores.
    public var cores: Int
    public var memoryBytes: UInt64

    public init(cores: Int, memoryBytes: UInt64) {
        self.cores = cores
        self.memoryBytes = memoryBytes
    }

    enum CodingKeys: String, CodingKey {
        case cores, memoryBytes = "memory_bytes"
    }
}

/// The body of every 4xx and 5xx answer.
public struct APIError: Codable, Sendable, Equatable, Error {
    /// One line: the problem and the fix.
    public var error: String
    /// The request field at fault (`name`, `config.memory`, ...), when one is.
    public var field: String?

    public init(_ error: String, field: String? = nil) {
        self.error = error
        self.field = field
    }
}

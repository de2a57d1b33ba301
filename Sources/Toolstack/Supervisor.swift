import FoundationEssentials
import Glibc
import Logging
import ToolstackAPI

/// Runs VMs: starts each as its own `tern run` process, watches it through a pidfd, drives it through its control
/// socket, and records every state change in the store (then announces it on the event bus). On `recover` it takes
/// back the processes a previous ternd left running.
public actor Supervisor {
    /// A VM process this ternd watches.
    private struct Supervised {
        let token: UInt64
        let identity: ProcessIdentity
        let pidfd: PidFD
        /// Started by this ternd, so `waitpid` reports its status; a re-adopted process is not.
        let isChild: Bool
        /// ternd sent it SIGKILL.
        var killedByHost = false
    }

    private let store: Store
    private let bus: EventBus
    private let stateDirectory: String
    private let launcher: VMMLauncher
    private let logger: Logger
    private let watcher: ExitWatcher
    private let exits: AsyncStream<UInt64>
    private var processes: [String: Supervised] = [:]
    private var nextToken: UInt64 = 1
    /// The callers of `waitForExit`, by the token of the process they wait on and then by their own number.
    private var exitWaiters: [UInt64: [Int: CheckedContinuation<Bool, Never>]] = [:]
    private var nextWaiter = 0

    /// How long `start` waits for a new VM's control socket to answer before it gives up on the VM.
    static let startTimeout: Duration = .seconds(15)
    /// How long `kill` waits for the process to be gone.
    static let killTimeout: Duration = .seconds(5)

    init(store: Store, bus: EventBus, stateDirectory: String, tern: String, logger: Logger) throws(ToolstackError) {
        self.store = store
        self.bus = bus
        self.stateDirectory = stateDirectory
        launcher = VMMLauncher(tern: tern)
        self.logger = logger
        let (exits, continuation) = AsyncStream<UInt64>.makeStream()
        self.exits = exits
        watcher = try ExitWatcher { token in continuation.yield(token) }
    }

    /// Handles process exits until the task is cancelled.
    func superviseExits() async {
        watcher.start()
        for await token in exits {
            processExited(token: token)
        }
    }

    /// Stops watching; the VM processes run on.
    func shutdown() {
        watcher.stop()
    }

    // MARK: Queries

    public func list() throws(ToolstackError) -> [VMInfo] {
        try store.vms().map(info)
    }

    public func show(_ name: String) throws(ToolstackError) -> VMInfo {
        try info(record(name))
    }

    // MARK: Definitions

    public func create(_ request: CreateVMRequest) throws(ToolstackError) -> VMInfo {
        let record = try VMDefinition.record(for: request)
        publish(try store.create(record))
        logger.info("VM defined", metadata: ["vm": "\(record.name)"])
        return try show(record.name)
    }

    public func delete(_ name: String) throws(ToolstackError) {
        publish(try store.delete(name: name))
        let paths = VMPaths(stateDirectory: stateDirectory, name: name)
        for file in [paths.config, paths.consoleLog, paths.vmmLog, paths.controlSocket] { unlink(file) }
        rmdir(paths.directory)
    }

    // MARK: Lifecycle

    /// Starts the VM's process and waits until its control socket answers (state `running`) or it has ended.
    public func start(_ name: String) async throws(ToolstackError) -> VMInfo {
        let current = try record(name)
        guard !current.state.hasProcess else {
            throw .conflict(message: "VM '\(name)' is \(current.state.rawValue); stop it before starting it again")
        }
        let paths = VMPaths(stateDirectory: stateDirectory, name: name)
        try prepareFiles(paths, config: current.config)
        let pid = try launcher.launch(paths)
        guard let pidfd = PidFD(pid: pid), let identity = ProcessIdentity.current(pid: pid) else {
            throw .failure(message: "tern run (pid \(pid)) vanished before ternd could watch it")
        }
        let token = nextToken
        nextToken += 1
        do {
            publish(try store.transition(name, Transition(to: .starting, process: identity, message: "tern run started as pid \(pid)"),
                                         expecting: [.defined, .stopped, .crashed]))
        } catch {
            _ = pidfd.send(signal: SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            throw error
        }
        processes[name] = Supervised(token: token, identity: identity, pidfd: pidfd, isChild: true)
        watcher.watch(pidfd, token: token)
        logger.info("VM starting", metadata: ["vm": "\(name)", "pid": "\(pid)"])
        try await awaitControlSocket(name, token: token, socket: paths.controlSocket)
        return try show(name)
    }

    /// Asks the VM to stop through its control socket, waits `grace`, then kills it.
    public func stop(_ name: String, grace: Duration) async throws(ToolstackError) -> VMInfo {
        let current = try record(name)
        let supervised = try process(of: current)
        if current.state != .stopping {
            publish(try store.transition(name, Transition(to: .stopping, process: supervised.identity, message: "stop requested"),
                                         expecting: [.starting, .running, .paused]))
        }
        let socket = VMPaths(stateDirectory: stateDirectory, name: name).controlSocket
        if case .failure(let error) = await VMControl.send("stop", to: socket) {
            logger.warning("VM did not take the stop command; it will be killed after the grace period",
                           metadata: ["vm": "\(name)", "error": "\(error.description)"])
        }
        if !(await waitForExit(name, token: supervised.token, within: grace)) {
            logger.warning("VM still running after the grace period; killing it", metadata: ["vm": "\(name)"])
            try await kill(name, token: supervised.token)
        }
        return try show(name)
    }

    /// Kills the VM's process at once (SIGKILL); the VM ends `stopped`.
    public func kill(_ name: String) async throws(ToolstackError) -> VMInfo {
        let supervised = try process(of: try record(name))
        try await kill(name, token: supervised.token)
        return try show(name)
    }

    /// Sends `pause` to a running VM, or `resume` to a paused one; a refusal is a conflict carrying the VM's answer.
    public func setPaused(_ name: String, _ paused: Bool) async throws(ToolstackError) -> VMInfo {
        let command = paused ? "pause" : "resume"
        let from: VMState = paused ? .running : .paused
        let current = try record(name)
        guard current.state == from else {
            throw .conflict(message: "VM '\(name)' is \(current.state.rawValue); only a \(from.rawValue) VM can \(command)")
        }
        let supervised = try process(of: current)
        let socket = VMPaths(stateDirectory: stateDirectory, name: name).controlSocket
        switch await VMControl.send(command, to: socket) {
        case .success(let answer) where answer.ok:
            publish(try store.transition(name, Transition(to: paused ? .paused : .running, process: supervised.identity,
                                                          message: paused ? "paused" : "resumed"),
                                         expecting: [from]))
        case .success(let answer):
            throw .conflict(message: "VM '\(name)' refused \(command): \(answer.error ?? "it gave no reason")")
        case .failure(let error):
            throw .conflict(message: "VM '\(name)' did not answer \(command): \(error.description)")
        }
        return try show(name)
    }

    // MARK: Recovery

    /// Takes back the VM processes a previous ternd started (identity: PID, start time and an answering control
    /// socket), records the end of those that died meanwhile, then starts the autostart VMs that are not running.
    public func recover() async throws(ToolstackError) {
        for current in try store.vms() where current.state.hasProcess {
            await adopt(current)
        }
        for current in try store.vms() where current.autostart && !current.state.hasProcess {
            do {
                _ = try await start(current.name)
            } catch {
                logger.error("autostart failed", metadata: ["vm": "\(current.name)", "error": "\(error.description)"])
            }
        }
    }

    private func adopt(_ current: VMRecord) async {
        let name = current.name
        let socket = VMPaths(stateDirectory: stateDirectory, name: name).controlSocket
        guard let identity = current.process, identity.isAlive, let pidfd = PidFD(pid: identity.pid), identity.isAlive else {
            record(name, ended: .unobserved(socketLeft: access(socket, F_OK) == 0))
            return
        }
        guard case .success(let answer) = await VMControl.send("status", to: socket), answer.ok else {
            // Ours by PID and start time, but deaf: end it rather than leave a VM nobody can control.
            _ = pidfd.send(signal: SIGKILL)
            recordQuietly(name, Transition(to: .crashed, message: "re-adopting pid \(identity.pid): its control socket did not answer; killed"))
            return
        }
        let token = nextToken
        nextToken += 1
        processes[name] = Supervised(token: token, identity: identity, pidfd: pidfd, isChild: false)
        watcher.watch(pidfd, token: token)
        let state: VMState = current.state == .starting ? .running : current.state
        recordQuietly(name, Transition(to: state, process: identity, message: "re-adopted pid \(identity.pid)"))
        logger.info("VM re-adopted", metadata: ["vm": "\(name)", "pid": "\(identity.pid)"])
    }

    // MARK: Internals

    private func record(_ name: String) throws(ToolstackError) -> VMRecord {
        guard let record = try store.vm(named: name) else { throw .notFound(name: name) }
        return record
    }

    private func process(of record: VMRecord) throws(ToolstackError) -> Supervised {
        guard record.state.hasProcess, let supervised = processes[record.name] else {
            throw .conflict(message: "VM '\(record.name)' is \(record.state.rawValue); it has no process; start it first")
        }
        return supervised
    }

    private func info(_ record: VMRecord) -> VMInfo {
        let config = (try? JSONDecoder().decode(JSONValue.self, from: Data(record.config.utf8))) ?? .object([:])
        return VMInfo(name: record.name, state: record.state, exitStatus: record.exitStatus, cpuPolicy: record.cpuPolicy,
                      autostart: record.autostart, pid: record.state.hasProcess ? record.process.map { Int($0.pid) } : nil,
                      config: config, consoleLog: VMPaths(stateDirectory: stateDirectory, name: record.name).consoleLog)
    }

    /// Creates the VM's directory and writes its config file (to a temporary name, then renamed into place).
    private func prepareFiles(_ paths: VMPaths, config: String) throws(ToolstackError) {
        guard mkdir(paths.directory, 0o750) == 0 || errno == EEXIST else {
            throw .failure(message: "\(paths.directory): \(String(cString: strerror(errno)))")
        }
        let temporary = paths.config + ".new"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else { throw .failure(message: "\(temporary): \(String(cString: strerror(errno)))") }
        let bytes = Array(config.utf8)
        let written = write(descriptor, bytes, bytes.count)
        close(descriptor)
        guard written == bytes.count, rename(temporary, paths.config) == 0 else {
            throw .failure(message: "\(paths.config): \(String(cString: strerror(errno)))")
        }
    }

    /// Polls the control socket until it answers (`running`), the process ends, or `startTimeout` passes (the VM is
    /// then killed).
    private func awaitControlSocket(_ name: String, token: UInt64, socket: String) async throws(ToolstackError) {
        let deadline = ContinuousClock.now + Self.startTimeout
        while processes[name]?.token == token {
            if case .success(let answer) = await VMControl.send("status", to: socket), answer.ok {
                guard let supervised = processes[name], supervised.token == token else { return }
                if (try? store.vm(named: name))?.state == .starting {
                    publish(try store.transition(name, Transition(to: .running, process: supervised.identity, message: "running"),
                                                 expecting: [.starting]))
                }
                return
            }
            if ContinuousClock.now >= deadline {
                logger.error("VM's control socket never answered; killing it", metadata: ["vm": "\(name)"])
                try await kill(name, token: token)
                return
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    private func kill(_ name: String, token: UInt64) async throws(ToolstackError) {
        guard var supervised = processes[name], supervised.token == token else { return }
        supervised.killedByHost = true
        processes[name] = supervised
        _ = supervised.pidfd.send(signal: SIGKILL)
        guard await waitForExit(name, token: token, within: Self.killTimeout) else {
            throw .failure(message: "VM '\(name)' (pid \(supervised.identity.pid)) survived SIGKILL for \(Self.killTimeout)")
        }
    }

    /// True once the process `token` names has been recorded as ended; false if `limit` passes first. Woken by
    /// `processExited` rather than polling; a cancelled caller still waits out `limit`.
    private func waitForExit(_ name: String, token: UInt64, within limit: Duration) async -> Bool {
        guard processes[name]?.token == token else { return true }
        let waiter = nextWaiter
        nextWaiter += 1
        let timer = Task {
            try? await Task.sleep(for: limit)
            self.wake(token: token, waiter: waiter, exited: false)
        }
        defer { timer.cancel() }
        return await withCheckedContinuation { continuation in
            exitWaiters[token, default: [:]][waiter] = continuation
        }
    }

    /// Resumes one caller of `waitForExit`, unless it has been resumed already.
    private func wake(token: UInt64, waiter: Int, exited: Bool) {
        guard let continuation = exitWaiters[token]?.removeValue(forKey: waiter) else { return }
        if exitWaiters[token]?.isEmpty == true { exitWaiters[token] = nil }
        continuation.resume(returning: exited)
    }

    private func processExited(token: UInt64) {
        guard let entry = processes.first(where: { $0.value.token == token }) else { return }
        let (name, supervised) = (entry.key, entry.value)
        processes[name] = nil
        let outcome: ExitOutcome
        if supervised.isChild {
            var status: Int32 = 0
            waitpid(supervised.identity.pid, &status, 0)
            outcome = ExitOutcome(waitStatus: status, byHost: supervised.killedByHost)
        } else {
            let socket = VMPaths(stateDirectory: stateDirectory, name: name).controlSocket
            outcome = supervised.killedByHost ? .signaled(SIGKILL, byHost: true) : .unobserved(socketLeft: access(socket, F_OK) == 0)
        }
        record(name, ended: outcome)
        for continuation in (exitWaiters.removeValue(forKey: token) ?? [:]).values {
            continuation.resume(returning: true)
        }
    }

    private func record(_ name: String, ended outcome: ExitOutcome) {
        logger.info("VM ended", metadata: ["vm": "\(name)", "outcome": "\(outcome.description)"])
        recordQuietly(name, Transition(to: outcome.state, exitStatus: outcome.exitStatus, message: outcome.description))
    }

    /// Records a transition nobody waits on; a failure is logged.
    private func recordQuietly(_ name: String, _ change: Transition) {
        do {
            publish(try store.transition(name, change))
        } catch {
            logger.error("cannot record a state change", metadata: ["vm": "\(name)", "error": "\(error.description)"])
        }
    }

    private func publish(_ event: VMEvent) {
        bus.publish(event)
    }
}

import Glibc
import KVM
import VirtioDevices

/// Commands waiting for the VMM thread, each with the mailbox its reply goes to.
final class CommandQueue: Sendable {
    struct Pending: Sendable {
        let command: VMMCommand
        let reply: Mailbox<Result<VMMReply, VMMError>>
    }

    let pending = Mailbox<Pending>()
    /// Wakes the VMM thread's poll when a command arrives.
    let arrived = WakeEvent()
}

/// What only the VMM thread knows about the VM's life.
struct Lifecycle {
    /// The VM state captured at the pause, whose kvmclock the resume restores; nil while running.
    var pausedAt: VMState?

    var state: RunState { pausedAt == nil ? .running : .paused }
}

extension Machine {
    /// Longest a caller waits for the VMM thread to carry out a command: longer than any bounded wait inside one.
    static let commandTimeoutMilliseconds = 15_000

    /// Has the VMM thread carry out `command` and returns its reply. Safe from any thread, before or during `run`
    /// (commands sent before `run` wait for it); once the machine has stopped every command fails with `.stopped`.
    public func execute(_ command: VMMCommand) throws(VMMError) -> VMMReply {
        let reply = Mailbox<Result<VMMReply, VMMError>>()
        guard commands.pending.send(CommandQueue.Pending(command: command, reply: reply)) else { throw .stopped }
        commands.arrived.signal()
        guard let result = reply.receive(waitingAtMost: Self.commandTimeoutMilliseconds) else {
            throw .timedOut(command: command.name)
        }
        return try result.get()
    }

    /// The VMM thread's loop: carries out commands one at a time until the machine stops, and asks the balloon
    /// for statistics on its interval. Commands still queued when it stops are answered `.stopped`.
    func serveCommands() {
        let statisticsInterval = balloon == nil ? nil : config.balloon?.statisticsInterval.map { Int64($0) * 1000 }
        var nextStatistics = statisticsInterval.map { monotonicMilliseconds() + $0 }
        var lifecycle = Lifecycle()
        var descriptors = [pollfd(fd: commands.arrived.descriptor, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: control.finished.descriptor, events: Int16(POLLIN), revents: 0)]
        while !control.isStopping {
            let timeout = nextStatistics.map { Int32(clamping: max(0, $0 - monotonicMilliseconds())) } ?? -1
            let count = poll(&descriptors, nfds_t(descriptors.count), timeout)
            if count < 0 {
                if errno == EINTR { continue }
                control.stop(.failed("poll: \(String(cString: strerror(errno)))"))
                break
            }
            if descriptors[0].revents & Int16(POLLIN) != 0 {
                var counter: UInt64 = 0
                _ = read(commands.arrived.descriptor, &counter, 8)
                while let pending = commands.pending.poll() {
                    pending.reply.send(Result { () throws(VMMError) in try perform(pending.command, &lifecycle) })
                }
            }
            if let interval = statisticsInterval, let due = nextStatistics, monotonicMilliseconds() >= due {
                if lifecycle.pausedAt == nil { balloon?.requestStatistics() }
                nextStatistics = due + interval
            }
        }
        commands.pending.close()
        while let pending = commands.pending.poll() { pending.reply.send(.failure(.stopped)) }
    }

    /// Carries out one command on the VMM thread.
    private func perform(_ command: VMMCommand, _ lifecycle: inout Lifecycle) throws(VMMError) -> VMMReply {
        guard !control.isStopping else { throw .stopped }
        switch command {
        case .status:
            return .status(lifecycle.state, name: config.name)
        case .stop:
            control.stop(.stoppedByHost(reason: "stop requested"))
            return .state(.stopping)
        case .pause:
            guard lifecycle.pausedAt == nil else { throw .wrongState(command: command.name, state: .paused) }
            lifecycle.pausedAt = try pause()
            return .state(.paused)
        case .resume:
            guard let pausedAt = lifecycle.pausedAt else { throw .wrongState(command: command.name, state: .running) }
            try resume(clock: pausedAt)
            lifecycle.pausedAt = nil
            return .state(.running)
        case .setBalloonTarget(let bytes):
            guard lifecycle.pausedAt == nil else { throw .wrongState(command: command.name, state: .paused) }
            return try setBalloonTarget(bytes: bytes)
        case .balloonStatistics:
            guard lifecycle.pausedAt == nil else { throw .wrongState(command: command.name, state: .paused) }
            return .balloon(balloonReport(try requireBalloon()))
        }
    }

    /// The pause protocol: host console input refused, every vCPU out of the guest (the exit in hand completed,
    /// kvmclock told), then every I/O thread quiescent (the event in hand finished, devices' requests in flight
    /// completed), then the VM state captured for its kvmclock. Whatever fails, the VM runs on as before.
    private func pause() throws(VMMError) -> VMState {
        control.setPaused(true)
        // Every I/O thread asked to pause is asked to resume on failure, also one whose answer came too late.
        var pausedThreads: [IOThread] = []
        do throws(VMMError) {
            try vcpus.pause()
            for thread in ioThreads {
                pausedThreads.append(thread)
                try thread.pause()
            }
            do {
                return try vm.captureState()
            } catch {
                throw .hypervisor("capturing the VM's clock: \(error)")
            }
        } catch {
            for thread in pausedThreads { try? thread.resume() }
            try? vcpus.resume()
            control.setPaused(false)
            throw error
        }
    }

    /// Undoes `pause` in reverse: the kvmclock set back to where it stood at the pause (so the guest does not see
    /// the time it spent paused), the I/O threads and then the vCPUs running again. The PIT and interrupt
    /// controllers keep their current state. If KVM refuses the clock the VM stays paused.
    private func resume(clock pausedAt: VMState) throws(VMMError) {
        do {
            var current = try vm.captureState()
            current.clock = pausedAt.clock
            try vm.restoreState(current, clock: .continueFromCapture)
        } catch {
            throw .hypervisor("restoring the VM's clock: \(error)")
        }
        for thread in ioThreads { try thread.resume() }
        try vcpus.resume()
        control.setPaused(false)
    }

    private func setBalloonTarget(bytes: UInt64) throws(VMMError) -> VMMReply {
        let balloon = try requireBalloon()
        guard bytes <= config.memory.bytes else {
            throw .invalidArgument("balloon \(MemorySize(bytes: bytes)) is larger than the guest's \(config.memory) of RAM")
        }
        balloon.setTarget(bytes: bytes)
        return .balloon(balloonReport(balloon))
    }

    private func requireBalloon() throws(VMMError) -> Balloon {
        guard let balloon else { throw .noSuchDevice("this VM has no balloon; start it with --balloon") }
        return balloon
    }

    /// The balloon's size and the guest's last statistics; asks the guest for fresh ones.
    private func balloonReport(_ balloon: Balloon) -> BalloonReport {
        balloon.requestStatistics()
        return BalloonReport(targetBytes: balloon.targetBytes, actualBytes: balloon.actualBytes,
                             statistics: balloon.latestStatistics?.named ?? [:])
    }
}

/// CLOCK_MONOTONIC in milliseconds.
func monotonicMilliseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
}

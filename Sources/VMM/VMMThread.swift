import Glibc
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
                    pending.reply.send(Result { () throws(VMMError) in try perform(pending.command) })
                }
            }
            if let interval = statisticsInterval, let due = nextStatistics, monotonicMilliseconds() >= due {
                balloon?.requestStatistics()
                nextStatistics = due + interval
            }
        }
        commands.pending.close()
        while let pending = commands.pending.poll() { pending.reply.send(.failure(.stopped)) }
    }

    /// Carries out one command on the VMM thread.
    private func perform(_ command: VMMCommand) throws(VMMError) -> VMMReply {
        guard !control.isStopping else { throw .stopped }
        switch command {
        case .status:
            return .status(.running, name: config.name)
        case .stop:
            control.stop(.stoppedByHost(reason: "stop requested"))
            return .state(.stopping)
        case .setBalloonTarget(let bytes):
            let balloon = try requireBalloon()
            guard bytes <= config.memory.bytes else {
                throw .invalidArgument("balloon \(MemorySize(bytes: bytes)) is larger than the guest's \(config.memory) of RAM")
            }
            balloon.setTarget(bytes: bytes)
            return .balloon(balloonReport(balloon))
        case .balloonStatistics:
            return .balloon(balloonReport(try requireBalloon()))
        }
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

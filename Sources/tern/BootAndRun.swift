import Glibc
import Logging
import Synchronization
import VMM

/// Builds the VM, runs it to the end and exits with its status: the guest's byte, 0 for a reset or power-off,
/// 1 with a report for a crash or VMM failure, 130 when stopped by a signal, the console escape or `tern control
/// stop`. `signals` has been taking the process's signals since the command started.
func bootAndRun(_ settings: VMConfig, forwardInput: Bool, signals: SignalHandling) -> Never {
    var logger = Logger(label: "tern")
    if let name = settings.name { logger[metadataKey: "vm"] = "\(name)" }
    let machine: Machine
    do {
        machine = try Machine(config: settings, logger: logger)
    } catch {
        fail(error.description)
    }
    signals.attach(machine)
    let outcome = machine.run(forwardInput: forwardInput)
    logger.info("guest RAM resident: \(machine.memory.residentBytes() >> 10) KiB")
    switch outcome {
    case .crashed, .failed:
        fail(outcome.description, status: outcome.exitStatus)
    case .stoppedByHost:
        logger.info("\(outcome)")
    default:
        break
    }
    exit(outcome.exitStatus)
}

/// How `tern run` and `tern exec` treat signals, from the start of the command, before the VM is built:
///
/// - SIGINT, SIGTERM and SIGHUP stop the VM cleanly (disks flushed, control socket removed, exit status 130); one
///   that arrives while the VM is being built stops it before its first instruction.
/// - SIGUSR1, SIGUSR2 and SIGALRM are ignored, with a line in the log at `-v`.
/// - SIGPIPE is ignored: a write to a closed pipe or socket fails with EPIPE instead of ending the process.
///
/// These signals are blocked in every thread and taken with sigwait on a thread of their own, so no handler runs
/// inside the VMM's threads. Create one, first thing, before any other thread starts: threads inherit the mask.
final class SignalHandling: Sendable {
    static let stopping: [Int32] = [SIGINT, SIGTERM, SIGHUP]
    static let ignored: [Int32] = [SIGUSR1, SIGUSR2, SIGALRM]

    private enum Target {
        /// No machine yet; the stop signal received meanwhile, if any.
        case waiting(stopRequest: String?)
        case machine(Machine)
    }

    private let target = Mutex(Target.waiting(stopRequest: nil))

    init(logger: Logger) {
        signal(SIGPIPE, SIG_IGN)
        var set = sigset_t()
        sigemptyset(&set)
        for number in Self.stopping + Self.ignored { sigaddset(&set, number) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let blocked = set
        // The signal thread waits for the blocked signals for as long as the process lives.
        guard let thread = spawnThread(named: "signals", { [self] in
            var signals = blocked
            var number: Int32 = 0
            while true {
                guard sigwait(&signals, &number) == 0 else { continue }
                received(number, logger: logger)
            }
        }) else {
            fail("cannot start the signal thread")
        }
        pthread_detach(thread)
    }

    /// From now on stop signals stop `machine`; one that came while it was being built stops it at once.
    func attach(_ machine: Machine) {
        target.withLock { target in
            if case .waiting(let request?) = target { machine.stop(.stoppedByHost(reason: request)) }
            target = .machine(machine)
        }
    }

    private func received(_ number: Int32, logger: Logger) {
        let name = String(cString: strsignal(number))
        guard Self.stopping.contains(number) else {
            logger.info("ignoring signal \(number) (\(name))")
            return
        }
        let reason = "received signal \(number) (\(name))"
        target.withLock { target in
            switch target {
            case .waiting(nil): target = .waiting(stopRequest: reason)
            case .waiting: break
            case .machine(let machine): machine.stop(.stoppedByHost(reason: reason))
            }
        }
    }
}

import Glibc
import Logging
import VMM

/// Builds the VM, runs it to the end and exits with its status: the guest's byte, 0 for a reset or power-off,
/// 1 with a report for a crash or VMM failure, 130 when stopped by a signal or the console escape.
func bootAndRun(_ settings: VMConfig, forwardInput: Bool) -> Never {
    let logger = Logger(label: "tern")
    let machine: Machine
    do {
        machine = try Machine(config: settings, logger: logger)
    } catch {
        fail(error.description)
    }
    let outcome = machine.run(forwardInput: forwardInput, handleSignals: true)
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

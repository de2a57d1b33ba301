import Foundation
import Glibc
import Synchronization
import CKVM
import KVM
import Testing
@testable import VMM

/// A machine running `run()` on a thread of its own, so that a test can send it commands.
final class BackgroundMachine: Sendable {
    let machine: Machine
    let console = CapturedOutput()
    private let result = Mutex<MachineOutcome?>(nil)

    init(_ config: VMConfig) throws {
        machine = try Machine(config: config, console: console)
        Thread { [self] in
            let outcome = machine.run()
            result.withLock { $0 = outcome }
        }.start()
    }

    /// How the run ended, waiting up to `seconds` for it; nil if it is still running.
    func outcome(within seconds: Double) -> MachineOutcome? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let outcome = result.withLock({ $0 }) { return outcome }
            usleep(2000)
        }
        return result.withLock { $0 }
    }

    /// Stops the machine (whatever its state) and waits for the run to end.
    func finish() -> MachineOutcome? {
        machine.stop(.stoppedByHost(reason: "test finished"))
        return outcome(within: 20)
    }
}

/// Commands on the VMM thread: each answered with a typed reply or a typed error.
@Suite(.serialized, .timeLimit(.minutes(2))) struct VMMCommandTests {
    static func waitingGuest() throws -> VMConfig {
        VMConfig(kernel: try Repository.guest("console"), cmdline: "expect-input=1 timeout=100000000000000",
                 virtioConsole: true, name: "commands")
    }

    @Test func statusAndStopAreAnsweredByTheVMMThread() throws {
        let running = try BackgroundMachine(try Self.waitingGuest())
        #expect(try running.machine.execute(.status) == .status(.running, name: "commands"))
        #expect(try running.machine.execute(.stop) == .state(.stopping))
        #expect(running.outcome(within: 20) == .stoppedByHost(reason: "stop requested"))
        #expect(throws: VMMError.stopped) { try running.machine.execute(.status) }
    }

    @Test func balloonCommandsWithoutABalloonAreRefused() throws {
        let running = try BackgroundMachine(try Self.waitingGuest())
        #expect(throws: VMMError.noSuchDevice("this VM has no balloon; start it with --balloon")) {
            try running.machine.execute(.setBalloonTarget(bytes: 1 << 20))
        }
        #expect(throws: VMMError.noSuchDevice("this VM has no balloon; start it with --balloon")) {
            try running.machine.execute(.balloonStatistics)
        }
        #expect(running.finish() == .stoppedByHost(reason: "test finished"))
    }

    @Test func aBalloonLargerThanRAMIsRefused() throws {
        var config = try Self.waitingGuest()
        config.balloon = BalloonSetting()
        let running = try BackgroundMachine(config)
        #expect(throws: VMMError.invalidArgument("balloon 1T is larger than the guest's \(config.memory) of RAM")) {
            try running.machine.execute(.setBalloonTarget(bytes: 1 << 40))
        }
        #expect(running.finish() == .stoppedByHost(reason: "test finished"))
    }
}

/// memtouch writes its pattern from 4 MiB up: the pages whose first word it has written so far.
func writtenPages(_ machine: Machine, mib: UInt64) -> Int {
    let memory = machine.memory
    let base: UInt64 = 4 << 20
    return (0..<(mib << 8)).count { page in
        (try? memory.load(UInt64.self, at: base + page * 4096)) ?? 0 != 0
    }
}

/// Waits up to `seconds` for `condition`.
func waitUntil(within seconds: Double = 20, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        if Date() >= deadline { return false }
        usleep(1000)
    }
    return true
}

/// The vCPU manager: each vCPU thread leaves the guest on command, hands its state over and takes it back.
@Suite(.serialized, .timeLimit(.minutes(2))) struct VCPUManagerTests {
    @Test func pausedVCPUsHandTheirStateOverAndTakeItBack() throws {
        let mib: UInt64 = 512
        let running = try BackgroundMachine(VMConfig(kernel: try Repository.guest("memtouch"), cmdline: "mib=\(mib)",
                                                     memory: MemorySize(bytes: 1 << 30), cpus: 2))
        let memory = running.machine
        try #require(waitUntil { writtenPages(memory, mib: mib) > 0 }, "memtouch never started writing")
        try running.machine.vcpus.pause()
        let before = writtenPages(memory, mib: mib)
        try #require(before < Int(mib << 8), "memtouch finished writing before the pause; the test shows nothing")
        let states = try running.machine.vcpus.captureStates(msrIndices: try Hypervisor().saveableMSRs(),
                                                             extendedStateSize: running.machine.vm.extendedStateSize)
        #expect(states.count == 2)
        #expect(states[0].multiprocessingState == UInt32(KVM_MP_STATE_RUNNABLE))
        usleep(300_000)
        #expect(writtenPages(memory, mib: mib) == before, "the guest wrote memory while paused")
        try running.machine.vcpus.restoreStates(states)
        try running.machine.vcpus.resume()
        #expect(running.outcome(within: 90) == .guestExit(0))
        #expect(running.console.text.contains("wrote and verified \(mib) MiB"), "\(running.console.text)")
    }
}

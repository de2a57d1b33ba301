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
    /// The console guest, waiting for input that never comes.
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

    @Test func pauseWhilePausedAndResumeWhileRunningAreRefusedAndChangeNothing() throws {
        let running = try BackgroundMachine(try Self.waitingGuest())
        let machine = running.machine
        #expect(throws: VMMError.wrongState(command: "resume", state: .running)) { try machine.execute(.resume) }
        #expect(try machine.execute(.pause) == .state(.paused))
        #expect(try machine.execute(.status) == .status(.paused, name: "commands"))
        #expect(throws: VMMError.wrongState(command: "pause", state: .paused)) { try machine.execute(.pause) }
        #expect(try machine.execute(.status) == .status(.paused, name: "commands"))
        #expect(try machine.execute(.resume) == .state(.running))
        #expect(try machine.execute(.status) == .status(.running, name: "commands"))
        #expect(running.finish() == .stoppedByHost(reason: "test finished"))
    }

    @Test func stopWhilePausedEndsTheVM() throws {
        let running = try BackgroundMachine(try Self.waitingGuest())
        #expect(try running.machine.execute(.pause) == .state(.paused))
        #expect(try running.machine.execute(.stop) == .state(.stopping))
        #expect(running.outcome(within: 20) == .stoppedByHost(reason: "stop requested"))
        #expect(throws: VMMError.stopped) { try running.machine.execute(.resume) }
    }

    @Test func balloonCommandsWaitForTheResume() throws {
        var config = try Self.waitingGuest()
        config.balloon = BalloonSetting()
        let running = try BackgroundMachine(config)
        #expect(try running.machine.execute(.pause) == .state(.paused))
        #expect(throws: VMMError.wrongState(command: "balloon", state: .paused)) {
            try running.machine.execute(.setBalloonTarget(bytes: 1 << 20))
        }
        #expect(throws: VMMError.wrongState(command: "balloon-statistics", state: .paused)) {
            try running.machine.execute(.balloonStatistics)
        }
        #expect(try running.machine.execute(.resume) == .state(.running))
        if case .balloon(let report) = try running.machine.execute(.setBalloonTarget(bytes: 1 << 20)) {
            #expect(report.targetBytes == 1 << 20)
        } else {
            Issue.record("a balloon command did not answer with the balloon")
        }
        #expect(running.finish() == .stoppedByHost(reason: "test finished"))
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

/// memtouch writes its pattern page after page from 4 MiB up: the pages it has written so far, found by binary
/// search for the first page whose first word is still zero.
func writtenPages(_ machine: Machine, mib: UInt64) -> Int {
    let memory = machine.memory
    let base: UInt64 = 4 << 20
    var (low, high) = (0, Int(mib << 8))
    while low < high {
        let middle = (low + high) / 2
        if (try? memory.load(UInt64.self, at: base + UInt64(middle) * 4096)) ?? 0 != 0 { low = middle + 1 } else { high = middle }
    }
    return low
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
        // memtouch never starts its AP: vCPU 1 waits in the kernel for INIT/SIPI, as a halted vCPU does, and paused.
        #expect(states[1].multiprocessingState != UInt32(KVM_MP_STATE_RUNNABLE))
        usleep(300_000)
        #expect(writtenPages(memory, mib: mib) == before, "the guest wrote memory while paused")
        try running.machine.vcpus.restoreStates(states)
        try running.machine.vcpus.resume()
        #expect(running.outcome(within: 90) == .guestExit(0))
        #expect(running.console.text.contains("wrote and verified \(mib) MiB"), "\(running.console.text)")
    }
}

/// Pause and resume of running guests: nothing moves while paused, everything carries on afterwards.
@Suite(.serialized, .timeLimit(.minutes(3))) struct PauseResumeTests {
    static func memtouch(mib: UInt64) throws -> VMConfig {
        VMConfig(kernel: try Repository.guest("memtouch"), cmdline: "mib=\(mib)", memory: MemorySize(bytes: 1 << 30), cpus: 2)
    }

    @Test func aPausedGuestMakesNoProgressAndCarriesOnAfterTheResume() throws {
        let mib: UInt64 = 960
        let running = try BackgroundMachine(try Self.memtouch(mib: mib))
        let machine = running.machine
        try #require(waitUntil { writtenPages(machine, mib: mib) > 0 }, "memtouch never started writing")
        let started = monotonicMilliseconds()
        #expect(try machine.execute(.pause) == .state(.paused))
        #expect(monotonicMilliseconds() - started < 1000, "the pause took \(monotonicMilliseconds() - started) ms")
        let before = writtenPages(machine, mib: mib)
        try #require(before < Int(mib << 8), "memtouch finished writing before the pause; the test shows nothing")
        usleep(500_000)
        #expect(writtenPages(machine, mib: mib) == before, "the guest wrote memory while paused")
        #expect(try machine.execute(.status) == .status(.paused, name: nil))
        #expect(try machine.execute(.resume) == .state(.running))
        #expect(waitUntil(within: 60) { writtenPages(machine, mib: mib) > before || running.outcome(within: 0) != nil },
                "the guest made no progress after the resume")
        #expect(running.outcome(within: 90) == .guestExit(0))
        #expect(running.console.text.contains("wrote and verified \(mib) MiB"), "\(running.console.text)")
    }

    @Test func manyPausesInARowLeaveTheGuestsWorkIntact() throws {
        let mib: UInt64 = 960
        let running = try BackgroundMachine(try Self.memtouch(mib: mib))
        let machine = running.machine
        try #require(waitUntil { writtenPages(machine, mib: mib) > 0 }, "memtouch never started writing")
        var pauses = 0
        // The guest may finish between two pauses: then the next pause finds the VM stopped.
        while pauses < 50, (try? machine.execute(.pause)) == .state(.paused) {
            usleep(2000)
            #expect(try machine.execute(.resume) == .state(.running))
            usleep(20_000)
            pauses += 1
        }
        #expect(pauses >= 10, "the guest finished after \(pauses) pauses")
        #expect(running.outcome(within: 90) == .guestExit(0))
        #expect(running.console.text.contains("wrote and verified \(mib) MiB"), "\(running.console.text)")
    }

    @Test func theGuestsClockDoesNotCountThePause() throws {
        let running = try BackgroundMachine(try VMMCommandTests.waitingGuest())
        let vm = running.machine.vm
        let before = try vm.captureState().clockNanoseconds
        #expect(try running.machine.execute(.pause) == .state(.paused))
        usleep(1_000_000)
        #expect(try running.machine.execute(.resume) == .state(.running))
        let after = try vm.captureState().clockNanoseconds
        #expect(after >= before)
        #expect(after - before < 500_000_000, "the guest's clock advanced \(after - before) ns over a pause of one second")
        #expect(running.finish() == .stoppedByHost(reason: "test finished"))
    }

    /// KVM logs the pages the guest writes once a slot's dirty logging is on, and the VMM's own writes are recorded
    /// beside them while tracking is on.
    @Test func dirtyLoggingSeesTheGuestsWritesAndWrittenPagesTheVMMs() throws {
        let mib: UInt64 = 960
        let running = try BackgroundMachine(try Self.memtouch(mib: mib))
        let machine = running.machine
        try #require(waitUntil { writtenPages(machine, mib: mib) > 0 }, "memtouch never started writing")
        try machine.memoryManager.setDirtyLogging(true, slot: 0)
        #expect(machine.memoryManager.isLogging(slot: 0))
        usleep(200_000)
        let dirty = try machine.memoryManager.takeDirtyLog(slot: 0).reduce(0) { $0 + $1.nonzeroBitCount }
        #expect(dirty > 0, "no page logged while memtouch writes")
        try machine.memoryManager.setDirtyLogging(false, slot: 0)
        machine.memory.writtenPages.setTracking(true)
        try machine.memory.store(UInt64(0), at: 0x7000)
        #expect(machine.memory.writtenPages.pages().contains(7))
        #expect(running.outcome(within: 90) == .guestExit(0))
    }

    /// The blk guest keeps requests in flight (16 at once in its bench) while it is paused and resumed again and
    /// again; every request completes and the pattern it wrote reads back whole.
    @Test(arguments: [DiskSetting.AIO.threads, .ioUring]) func aBlockGuestWithRequestsInFlightCompletesThemAll(aio: DiskSetting.AIO) throws {
        let path = "/tmp/tern-pause-blk-\(getpid())-\(aio)"
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(descriptor >= 0 && ftruncate(descriptor, 16 << 20) == 0)
        close(descriptor)
        defer { unlink(path) }
        var disk = DiskSetting(path: path)
        disk.aio = aio
        let write = try boot(VMConfig(kernel: try Repository.guest("blk"), cmdline: "seed=5", disks: [disk]))
        #expect(write.outcome == .guestExit(0), "\(write.output)")
        try pauseAndResumeRepeatedly(VMConfig(kernel: try Repository.guest("blk"),
                                              cmdline: "mode=bench qd=16 bench-cycles=3000000000 timeout=100000000000 seed=5", disks: [disk]))
        // The bench's machine lets go of the disk when its run thread has let go of it.
        var check: GuestRun?
        #expect(waitUntil(within: 10) {
            check = try? boot(VMConfig(kernel: try Repository.guest("blk"), cmdline: "mode=check-pattern seed=5", disks: [disk]))
            return check != nil
        })
        #expect(check?.outcome == .guestExit(0))
        #expect(check?.output.contains("pattern verified on") == true, "\(check?.output ?? "")")
    }

    /// Runs `config`, pausing and resuming it every few tens of milliseconds until it ends; expects a clean exit.
    private func pauseAndResumeRepeatedly(_ config: VMConfig) throws {
        let bench = try BackgroundMachine(config)
        usleep(200_000)
        var pauses = 0
        while pauses < 40, (try? bench.machine.execute(.pause)) == .state(.paused) {
            usleep(5000)
            #expect(try bench.machine.execute(.resume) == .state(.running))
            usleep(30_000)
            pauses += 1
        }
        #expect(pauses > 0, "the bench ended before the first pause")
        #expect(bench.outcome(within: 90) == .guestExit(0), "\(bench.console.text)")
    }
}

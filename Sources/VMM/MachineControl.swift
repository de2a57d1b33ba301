import KVM
import Synchronization

/// The run state every thread of a machine shares: whether it is stopping, why, and how to reach each vCPU.
final class MachineControl: Sendable {
    struct State {
        var outcome: MachineOutcome?
        var kickers: [Int: VCPUKicker] = [:]
        var threadIDs: [Int: Int32] = [:]
        var stopActions: [@Sendable () -> Void] = []
    }

    private let state = Mutex(State())
    private let stopping = Atomic<Bool>(false)
    private let paused = Atomic<Bool>(false)
    /// Signalled once when the machine stops.
    let finished = WakeEvent()

    /// Whether the machine is stopping; vCPUs check this before every entry into the guest.
    @inline(__always)
    var isStopping: Bool { stopping.load(ordering: .acquiring) }

    /// Whether the VMM thread has paused the machine.
    var isPaused: Bool { paused.load(ordering: .acquiring) }

    /// Records that the machine is paused or running; the VMM thread alone calls this.
    func setPaused(_ value: Bool) {
        paused.store(value, ordering: .releasing)
    }

    /// Why the machine stopped, once it has.
    var outcome: MachineOutcome? { state.withLock { $0.outcome } }

    var threadIDs: [Int: Int32] { state.withLock { $0.threadIDs } }

    /// Runs `action` once when the machine stops (at once if it has): wakes threads that wait for commands.
    func whenStopping(_ action: @escaping @Sendable () -> Void) {
        let stopped: Bool = state.withLock { state in
            if state.outcome == nil { state.stopActions.append(action) }
            return state.outcome != nil
        }
        if stopped { action() }
    }

    /// Makes vCPU `index` leave the guest, if it has started and not yet ended.
    func kick(_ index: Int) {
        state.withLock { state in
            if let kicker = state.kickers[index] { kicker.kick() }
        }
    }

    /// Ends the machine with `outcome` unless it already ended, and kicks every vCPU out of the guest.
    ///
    /// The flag is set and the kicks are sent under the lock: a vCPU that registers later sees the flag before it
    /// enters the guest, and one that unregisters (before its run area is unmapped and its thread ends) is never
    /// kicked afterwards.
    func stop(_ outcome: MachineOutcome) {
        let actions: [@Sendable () -> Void]? = state.withLock { state in
            guard state.outcome == nil else { return nil }
            state.outcome = outcome
            stopping.store(true, ordering: .releasing)
            for kicker in state.kickers.values { kicker.kick() }
            defer { state.stopActions = [] }
            return state.stopActions
        }
        guard let actions else { return }
        for action in actions { action() }
        finished.signal()
    }

    /// Records a started vCPU so that `stop` can reach it.
    func register(index: Int, threadID: Int32, kicker: VCPUKicker) {
        state.withLock { state in
            state.kickers[index] = kicker
            state.threadIDs[index] = threadID
        }
    }

    /// Forgets vCPU `index`'s kicker; call before the vCPU's run area goes away.
    func unregister(index: Int) {
        _ = state.withLock { $0.kickers.removeValue(forKey: index) }
    }
}

import KVM
import Synchronization

/// The run state every thread of a machine shares: whether it is stopping, why, and how to reach each vCPU.
final class MachineControl: Sendable {
    struct State {
        var outcome: MachineOutcome?
        var kickers: [VCPUKicker] = []
        var threadIDs: [Int: Int32] = [:]
    }

    private let state = Mutex(State())
    private let stopping = Atomic<Bool>(false)
    /// Signalled once when the machine stops.
    let finished = WakeEvent()

    /// Whether the machine is stopping; vCPUs check this before every entry into the guest.
    @inline(__always)
    var isStopping: Bool { stopping.load(ordering: .acquiring) }

    /// Why the machine stopped, once it has.
    var outcome: MachineOutcome? { state.withLock { $0.outcome } }

    var threadIDs: [Int: Int32] { state.withLock { $0.threadIDs } }

    /// Ends the machine with `outcome` unless it already ended, and kicks every vCPU out of the guest.
    func stop(_ outcome: MachineOutcome) {
        // The flag is set under the lock, so a vCPU that registers after this snapshot sees it before entering the guest.
        let kickers: [VCPUKicker]? = state.withLock { state in
            guard state.outcome == nil else { return nil }
            state.outcome = outcome
            stopping.store(true, ordering: .releasing)
            return state.kickers
        }
        guard let kickers else { return }
        for kicker in kickers { kicker.kick() }
        finished.signal()
    }

    /// Records a started vCPU so that `stop` can reach it.
    func register(index: Int, threadID: Int32, kicker: VCPUKicker) {
        state.withLock { state in
            state.kickers.append(kicker)
            state.threadIDs[index] = threadID
        }
    }
}

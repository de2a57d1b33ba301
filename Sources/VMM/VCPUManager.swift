import KVM
import Synchronization

/// What the VMM thread asks of a vCPU's thread, which owns the `VCPU` and is the only one to touch it.
enum VCPUCommand: Sendable {
    /// Leave the guest (completing the exit in hand), tell kvmclock, and wait for further commands.
    case pause
    /// Enter the guest again.
    case resume
    /// Capture the whole vCPU state (while paused).
    case captureState(msrIndices: [UInt32], extendedStateSize: Int)
    /// Load a captured state (while paused).
    case restoreState(VCPUState)
}

/// A vCPU thread's answer to a `VCPUCommand`.
enum VCPUReply: Sendable, Equatable {
    case paused
    case resumed
    case captured(VCPUState)
    case restored
}

/// One vCPU's command channel: the VMM thread sends, the vCPU thread obeys between two entries into the guest and
/// replies. Each command carries a sequence number, so that a late reply to a command whose wait timed out is never
/// taken for the answer to a later one.
final class VCPUChannel: Sendable {
    private struct Request: Sendable {
        let sequence: UInt64
        let command: VCPUCommand
    }

    private struct Response: Sendable {
        let sequence: UInt64
        let result: Result<VCPUReply, KVMError>
    }

    private let requests = Mailbox<Request>()
    private let responses = Mailbox<Response>()
    /// Requests sent and not yet taken: what the vCPU checks (one atomic load) before every entry into the guest.
    private let queued = Atomic<Int>(0)
    private let lastSequence = Atomic<UInt64>(0)

    /// Whether commands wait for the vCPU thread.
    @inline(__always)
    var hasCommands: Bool { queued.load(ordering: .acquiring) > 0 }

    /// Queues `command`; returns its sequence number, or nil when the channel is closed (the machine is stopping).
    func send(_ command: VCPUCommand) -> UInt64? {
        let sequence = lastSequence.add(1, ordering: .relaxed).newValue
        queued.add(1, ordering: .releasing)
        guard requests.send(Request(sequence: sequence, command: command)) else {
            queued.subtract(1, ordering: .relaxed)
            return nil
        }
        return sequence
    }

    /// The reply to command `sequence`, waiting until `deadline` (monotonic milliseconds). Nil when the wait timed
    /// out or the channel closed.
    func reply(to sequence: UInt64, before deadline: Int64) -> Result<VCPUReply, KVMError>? {
        while true {
            let remaining = Int(max(0, deadline - monotonicMilliseconds()))
            guard let response = responses.receive(waitingAtMost: remaining) else { return nil }
            if response.sequence == sequence { return response.result }
        }
    }

    /// On the vCPU thread: the next command, waiting for one when `wait` is set. Nil when none is queued (or, while
    /// waiting, when the channel closed).
    func nextCommand(wait: Bool) -> (sequence: UInt64, command: VCPUCommand)? {
        guard let request = wait ? requests.receive() : requests.poll() else { return nil }
        queued.subtract(1, ordering: .relaxed)
        return (request.sequence, request.command)
    }

    /// On the vCPU thread: answers command `sequence`.
    func answer(_ sequence: UInt64, _ result: Result<VCPUReply, KVMError>) {
        responses.send(Response(sequence: sequence, result: result))
    }

    /// Wakes a paused vCPU thread and any waiter for good: the machine is stopping.
    func close() {
        requests.close()
        responses.close()
    }
}

/// The vCPUs of a machine as the VMM thread sees them: one channel each, and the kicks that make a vCPU in the guest
/// look at its channel promptly.
final class VCPUManager: Sendable {
    /// Longest a vCPU may take to leave the guest and answer a command.
    static let replyTimeoutMilliseconds = 2000

    let channels: [VCPUChannel]
    private let control: MachineControl

    init(count: Int, control: MachineControl) {
        let channels = (0..<count).map { _ in VCPUChannel() }
        self.channels = channels
        self.control = control
        control.whenStopping { for channel in channels { channel.close() } }
    }

    /// Every vCPU out of the guest, with any exit in hand completed, and waiting. On failure the vCPUs that did
    /// pause are resumed, and so is a late one once it pauses.
    func pause() throws(VMMError) {
        do {
            _ = try broadcast { _ in .pause }
        } catch {
            _ = try? broadcast { _ in .resume }
            throw error
        }
    }

    /// Every paused vCPU back into the guest.
    func resume() throws(VMMError) {
        _ = try broadcast { _ in .resume }
    }

    /// Each vCPU's whole state, captured on its own thread; call while paused.
    func captureStates(msrIndices: [UInt32], extendedStateSize: Int) throws(VMMError) -> [VCPUState] {
        var states: [VCPUState] = []
        for reply in try broadcast({ _ in .captureState(msrIndices: msrIndices, extendedStateSize: extendedStateSize) }) {
            guard case .captured(let state) = reply else { throw .hypervisor("a vCPU answered a capture with \(reply)") }
            states.append(state)
        }
        return states
    }

    /// Loads `states` (one per vCPU, by index), each on its vCPU's thread; call while paused.
    func restoreStates(_ states: [VCPUState]) throws(VMMError) {
        guard states.count == channels.count else {
            throw .invalidArgument("\(states.count) vCPU states for \(channels.count) vCPUs")
        }
        _ = try broadcast { .restoreState(states[$0]) }
    }

    /// Sends each vCPU its command, kicks them all out of the guest, and collects the replies in vCPU order.
    private func broadcast(_ command: (Int) -> VCPUCommand) throws(VMMError) -> [VCPUReply] {
        var sequences: [UInt64] = []
        for (index, channel) in channels.enumerated() {
            guard let sequence = channel.send(command(index)) else { throw .stopped }
            sequences.append(sequence)
            control.kick(index)
        }
        let deadline = monotonicMilliseconds() + Int64(Self.replyTimeoutMilliseconds)
        var replies: [VCPUReply] = []
        for (index, channel) in channels.enumerated() {
            switch channel.reply(to: sequences[index], before: deadline) {
            case .success(let reply): replies.append(reply)
            case .failure(let error): throw .hypervisor("vCPU \(index): \(error)")
            case nil:
                if control.isStopping { throw .stopped }
                throw .vcpuUnresponsive(index: index, milliseconds: Self.replyTimeoutMilliseconds)
            }
        }
        return replies
    }
}

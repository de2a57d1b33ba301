import Devices
import Synchronization
import Virtio

/// An interrupt line that remembers its level and counts its changes.
public final class RecordingLine: InterruptLine {
    private let state = Mutex((level: false, changes: 0))

    public init() {}

    public func setLevel(_ asserted: Bool) {
        state.withLock { state in
            if state.level != asserted { state.changes += 1 }
            state.level = asserted
        }
    }

    public var isAsserted: Bool { state.withLock { $0.level } }
    /// How often the level changed.
    public var changes: Int { state.withLock { $0.changes } }
}

/// Records every signal a VirtIO device sends to its transport.
public final class RecordingInterrupt: InterruptSignal {
    private struct Record {
        var usedQueues: [Int] = []
        var configurationChanges = 0
        var resetReasons: [String] = []
        var serviceRequests: [Int] = []
    }

    private let record = Mutex(Record())

    public init() {}

    public func signalUsedBuffers(queue: Int) { record.withLock { $0.usedQueues.append(queue) } }
    public func signalConfigurationChange() { record.withLock { $0.configurationChanges += 1 } }
    public func signalNeedsReset(reason: String) { record.withLock { $0.resetReasons.append(reason) } }
    public func requestService(queue: Int) { record.withLock { $0.serviceRequests.append(queue) } }

    /// The queues of the used-buffer notifications, in order.
    public var usedQueues: [Int] { record.withLock { $0.usedQueues } }
    /// How many used-buffer notifications were sent.
    public var usedBuffers: Int { record.withLock { $0.usedQueues.count } }
    public var configurationChanges: Int { record.withLock { $0.configurationChanges } }
    /// Why the device asked to be reset, in order.
    public var resetReasons: [String] { record.withLock { $0.resetReasons } }
    public var needsReset: Bool { record.withLock { !$0.resetReasons.isEmpty } }
    public var resets: Int { record.withLock { $0.resetReasons.count } }
    /// The queues the device asked to be serviced again, in order.
    public var serviceRequests: [Int] { record.withLock { $0.serviceRequests } }
}

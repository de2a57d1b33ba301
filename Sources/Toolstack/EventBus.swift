import Synchronization
import ToolstackAPI

/// Hands every event to every current subscriber (the `GET /v1/events` streams). A subscriber that falls behind
/// keeps the newest 1000 events.
final class EventBus: Sendable {
    private let subscribers = Mutex<(next: Int, streams: [Int: AsyncStream<VMEvent>.Continuation])>((0, [:]))

    func publish(_ event: VMEvent) {
        for continuation in subscribers.withLock({ Array($0.streams.values) }) {
            continuation.yield(event)
        }
    }

    /// A stream of the events published from now on; it ends its subscription when it is dropped or cancelled.
    func subscribe() -> AsyncStream<VMEvent> {
        let (stream, continuation) = AsyncStream<VMEvent>.makeStream(bufferingPolicy: .bufferingNewest(1000))
        let id = subscribers.withLock { state in
            let id = state.next
            state.next += 1
            state.streams[id] = continuation
            return id
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.subscribers.withLock { $0.streams.removeValue(forKey: id) }
        }
        return stream
    }
}

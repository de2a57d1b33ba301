import Glibc

/// A first-in, first-out queue between threads: any thread sends, one thread receives, waiting if need be. Once
/// closed, sends are dropped and receivers get nil when the queue is empty, so a thread blocked on it wakes when the
/// machine stops. Used for the commands the VMM thread sends vCPU and I/O threads, and for their replies.
final class Mailbox<Message: Sendable>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Guarded by `mutex`.
    private var messages: [Message] = []
    private var closed = false

    init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    /// Queues `message` and wakes the receiver; returns false (dropping it) when the mailbox is closed.
    @discardableResult
    func send(_ message: Message) -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        guard !closed else { return false }
        messages.append(message)
        pthread_cond_broadcast(condition)
        return true
    }

    /// The oldest message, waiting for one up to `milliseconds` (forever when nil). Nil when the wait timed out, or
    /// the mailbox is closed and empty.
    func receive(waitingAtMost milliseconds: Int? = nil) -> Message? {
        var deadline = timespec()
        if let milliseconds {
            clock_gettime(CLOCK_MONOTONIC, &deadline)
            let nanoseconds = Int(deadline.tv_nsec) + (milliseconds % 1000) * 1_000_000
            deadline.tv_sec += milliseconds / 1000 + nanoseconds / 1_000_000_000
            deadline.tv_nsec = nanoseconds % 1_000_000_000
        }
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while messages.isEmpty && !closed {
            if milliseconds == nil {
                pthread_cond_wait(condition, mutex)
            } else if pthread_cond_timedwait(condition, mutex, &deadline) == ETIMEDOUT {
                break
            }
        }
        return messages.isEmpty ? nil : messages.removeFirst()
    }

    /// The oldest message, if one is queued; never waits.
    func poll() -> Message? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return messages.isEmpty ? nil : messages.removeFirst()
    }

    /// Whether `close` was called.
    var isClosed: Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return closed
    }

    /// Refuses further messages and wakes every receiver. Messages already queued can still be received.
    func close() {
        pthread_mutex_lock(mutex)
        closed = true
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }
}

import CKVM
import Glibc

/// Starts a joinable OS thread running `body`. vCPUs need real threads: KVM_RUN blocks for as long as the guest runs.
func spawnThread(_ body: @escaping @Sendable () -> Void) -> pthread_t? {
    final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let context = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(&thread, nil, { context in
        let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
        box.body()
        return nil
    }, context)
    guard result == 0 else {
        Unmanaged<Box>.fromOpaque(context).release()
        return nil
    }
    return thread
}

/// A one-shot countdown: threads arrive and wait until `count` of them have.
final class Latch: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var remaining: Int

    init(count: Int) {
        remaining = count
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    /// Lets every waiter go now, whoever has not arrived.
    func release() {
        pthread_mutex_lock(mutex)
        remaining = 0
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }

    func arriveAndWait() {
        pthread_mutex_lock(mutex)
        remaining -= 1
        if remaining <= 0 {
            pthread_cond_broadcast(condition)
        } else {
            while remaining > 0 { pthread_cond_wait(condition, mutex) }
        }
        pthread_mutex_unlock(mutex)
    }
}

/// An eventfd used to wake a thread blocked in poll.
final class WakeEvent: Sendable {
    let descriptor: Int32

    init() {
        descriptor = eventfd(0, Int32(EFD_CLOEXEC))
    }

    deinit {
        close(descriptor)
    }

    func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(descriptor, &one, 8)
    }
}

import CKVM
import Glibc

/// Starts a joinable OS thread named `name` (its role, such as `vcpu0` or `io-blk0`; at most 15 bytes show in
/// `top -H` and `ps -L`) running `body`. vCPUs need real threads: KVM_RUN blocks for as long as the guest runs.
public func spawnThread(named name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t? {
    final class Box {
        let name: String
        let body: @Sendable () -> Void
        init(_ name: String, _ body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }
    let context = Unmanaged.passRetained(Box(name, body)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(&thread, nil, { context in
        let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
        nameCurrentThread(box.name)
        box.body()
        return nil
    }, context)
    guard result == 0 else {
        Unmanaged<Box>.fromOpaque(context).release()
        // pthread_create returns its error instead of setting errno; callers report errno.
        errno = result
        return nil
    }
    return thread
}

/// Names the calling thread, as pthread_setname_np does (which Glibc's Swift overlay does not offer): through
/// /proc/thread-self/comm, which keeps the first 15 bytes.
public func nameCurrentThread(_ name: String) {
    let descriptor = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return }
    let bytes = Array(name.utf8.prefix(15))
    _ = Glibc.write(descriptor, bytes, bytes.count)
    close(descriptor)
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

import Glibc
import Synchronization

/// Watches processes through their pidfds on one thread (poll) and reports each exit once, by the token it was
/// registered with. Holds a reference to each pidfd until its process exits or `stop` is called.
final class ExitWatcher: Sendable {
    /// A pipe whose read end wakes the thread: one byte per change to the watched set, end of file to stop.
    private let wakeRead: Int32
    private let wakeWrite = Mutex<Int32>(-1)
    private let watched = Mutex<[UInt64: PidFD]>([:])
    private let onExit: @Sendable (UInt64) -> Void
    private let thread = Mutex<pthread_t?>(nil)

    /// `onExit` runs on the watcher's thread with the token of a process that has exited.
    init(onExit: @escaping @Sendable (UInt64) -> Void) throws(ToolstackError) {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw .failure(message: "pipe: \(String(cString: strerror(errno)))") }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        wakeRead = ends[0]
        wakeWrite.withLock { $0 = ends[1] }
        self.onExit = onExit
    }

    deinit {
        close(wakeRead)
        wakeWrite.withLock { if $0 >= 0 { close($0) } }
    }

    /// Starts the watcher's thread.
    func start() {
        let box = Unmanaged.passRetained(self)
        var handle = pthread_t()
        pthread_create(&handle, nil, { argument in
            let watcher = Unmanaged<ExitWatcher>.fromOpaque(argument!).takeRetainedValue()
            watcher.run()
            return nil
        }, box.toOpaque())
        thread.withLock { $0 = handle }
    }

    /// Stops the thread and forgets every process.
    func stop() {
        wakeWrite.withLock { descriptor in
            if descriptor >= 0 { close(descriptor) }
            descriptor = -1
        }
        if let handle = thread.withLock({ $0 }) { pthread_join(handle, nil) }
        thread.withLock { $0 = nil }
        watched.withLock { $0.removeAll() }
    }

    /// Reports `token` when the process `pidfd` names exits (at once if it already has).
    func watch(_ pidfd: PidFD, token: UInt64) {
        watched.withLock { $0[token] = pidfd }
        wakeWrite.withLock { descriptor in
            var byte: UInt8 = 1
            _ = write(descriptor, &byte, 1)
        }
    }

    private func run() {
        var drain = [UInt8](repeating: 0, count: 64)
        while true {
            let current = watched.withLock { $0.map { (token: $0.key, descriptor: $0.value.descriptor) } }
            var descriptors = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            descriptors += current.map { pollfd(fd: $0.descriptor, events: Int16(POLLIN), revents: 0) }
            if poll(&descriptors, nfds_t(descriptors.count), -1) < 0 {
                if errno == EINTR { continue }
                return
            }
            if descriptors[0].revents != 0, read(wakeRead, &drain, drain.count) <= 0 { return }
            for (index, entry) in current.enumerated() where descriptors[index + 1].revents != 0 {
                if watched.withLock({ $0.removeValue(forKey: entry.token) }) != nil {
                    onExit(entry.token)
                }
            }
        }
    }
}

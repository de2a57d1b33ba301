import CKVM
import Glibc

/// A thread that waits on eventfds (epoll) and runs each one's handler: device work happens here, not on vCPUs.
final class IOThread: @unchecked Sendable {
    private let poller: Int32
    private let wake = WakeEvent()
    /// Handlers by eventfd; filled before `start` and only read afterwards.
    private var handlers: [Int32: @Sendable () -> Void] = [:]
    private var thread: pthread_t?

    init() throws(MachineError) {
        poller = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard poller >= 0 else { throw MachineError("epoll_create1: \(String(cString: strerror(errno)))") }
        try watch(wake.descriptor)
    }

    deinit {
        for descriptor in handlers.keys { close(descriptor) }
        close(poller)
    }

    /// Creates an eventfd whose signals run `handler` on this thread; returns the eventfd. Call before `start`.
    func addEvent(_ handler: @escaping @Sendable () -> Void) throws(MachineError) -> Int32 {
        let descriptor = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard descriptor >= 0 else { throw MachineError("eventfd: \(String(cString: strerror(errno)))") }
        handlers[descriptor] = handler
        try watch(descriptor)
        return descriptor
    }

    private func watch(_ descriptor: Int32) throws(MachineError) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = descriptor
        guard epoll_ctl(poller, EPOLL_CTL_ADD, descriptor, &event) == 0 else {
            throw MachineError("epoll_ctl: \(String(cString: strerror(errno)))")
        }
    }

    /// Starts the thread, unless there is nothing to wait for.
    func start() {
        guard !handlers.isEmpty else { return }
        thread = spawnThread { [self] in loop() }
    }

    /// Stops the thread and waits for it.
    func stop() {
        wake.signal()
        if let thread { pthread_join(thread, nil) }
        thread = nil
    }

    private func loop() {
        var events = [epoll_event](repeating: epoll_event(), count: 16)
        var counter: UInt64 = 0
        while true {
            let count = epoll_wait(poller, &events, Int32(events.count), -1)
            if count < 0 {
                if errno == EINTR { continue }
                return
            }
            for event in events[0..<Int(count)] {
                let descriptor = event.data.fd
                if descriptor == wake.descriptor { return }
                _ = read(descriptor, &counter, 8)
                handlers[descriptor]?()
            }
        }
    }
}

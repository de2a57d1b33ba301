import CKVM
import Glibc
import Virtio

/// A thread that waits on eventfds and host descriptors (epoll) and runs their handlers: device work happens
/// here, not on vCPUs.
///
/// Two kinds of sources: queue-notification eventfds, each with its own handler, registered before `start`;
/// and host descriptors that devices watch at any time through a `HostEventWatcher`, edge-triggered, whose
/// readiness goes to the owning device's dispatcher. An epoll entry's data says which: the top bit marks a
/// host descriptor, with the device's index above the device's 32-bit token; otherwise it is the eventfd.
///
/// The VMM thread pauses it with `pause()`: the thread finishes the event in hand, has each device finish its
/// requests in flight (`VirtioDevice.quiesce()`), acknowledges and takes no event until `resume()`. Notifications
/// and host readiness that arrive meanwhile stay in their eventfds and in epoll, and are served after the resume.
final class IOThread: @unchecked Sendable {
    enum Command: Sendable {
        case pause
        case resume
    }

    /// Longest a paused thread may take to finish the work in hand.
    static let pauseTimeoutMilliseconds = 5000

    private let poller: Int32
    /// Signals `commands` (and the stop) to the thread's epoll loop.
    private let wake = WakeEvent()
    private let commands = Mailbox<(sequence: UInt64, command: Command)>()
    private let acknowledgements = Mailbox<UInt64>()
    /// Written by the VMM thread only.
    private var lastSequence: UInt64 = 0
    /// What each device does to finish its requests in flight before a pause; filled before `start`.
    private var quiescers: [@Sendable () -> Void] = []
    /// Handlers by eventfd; filled before `start` and only read afterwards.
    private var handlers: [Int32: @Sendable () -> Void] = [:]
    /// Host-event dispatchers by device index; filled before `start` and only read afterwards.
    private var dispatchers: [@Sendable (UInt32, HostEventKind) -> Void] = []
    private var thread: pthread_t?
    /// The thread's name: `io-` and the device, such as `io-blk0`.
    let name: String

    private static let hostEventFlag: UInt64 = 1 << 63

    init(name: String) throws(MachineError) {
        self.name = name
        poller = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard poller >= 0 else { throw MachineError("epoll_create1: \(String(cString: strerror(errno)))") }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = UInt64(UInt32(bitPattern: wake.descriptor))
        guard epoll_ctl(poller, EPOLL_CTL_ADD, wake.descriptor, &event) == 0 else {
            throw MachineError("epoll_ctl: \(String(cString: strerror(errno)))")
        }
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
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = UInt64(UInt32(bitPattern: descriptor))
        guard epoll_ctl(poller, EPOLL_CTL_ADD, descriptor, &event) == 0 else {
            throw MachineError("epoll_ctl: \(String(cString: strerror(errno)))")
        }
        return descriptor
    }

    /// Registers a device whose host descriptors report to `dispatch` (token, readiness) on this thread, and
    /// returns the watcher to give that device. Call before `start`; the watcher works from any thread.
    func addDevice(_ dispatch: @escaping @Sendable (UInt32, HostEventKind) -> Void) -> any HostEventWatcher {
        dispatchers.append(dispatch)
        return DeviceWatcher(poller: poller, device: UInt64(dispatchers.count - 1))
    }

    /// Has `quiesce` run on this thread when it pauses, after the event in hand. Call before `start`.
    func onPause(_ quiesce: @escaping @Sendable () -> Void) {
        quiescers.append(quiesce)
    }

    /// Asks the thread to finish the work in hand and take no further event, and waits (boundedly) until it has.
    /// Call from the VMM thread only.
    func pause() throws(VMMError) {
        try send(.pause)
    }

    /// Lets a paused thread take events again. Call from the VMM thread only.
    func resume() throws(VMMError) {
        try send(.resume)
    }

    private func send(_ command: Command) throws(VMMError) {
        guard thread != nil else { return }
        lastSequence += 1
        let sequence = lastSequence
        guard commands.send((sequence, command)) else { throw .stopped }
        wake.signal()
        let deadline = monotonicMilliseconds() + Int64(Self.pauseTimeoutMilliseconds)
        while let acknowledged = acknowledgements.receive(waitingAtMost: Int(max(0, deadline - monotonicMilliseconds()))) {
            if acknowledged == sequence { return }
        }
        throw .ioThreadUnresponsive(name: name, milliseconds: Self.pauseTimeoutMilliseconds)
    }

    /// Starts the thread, unless there is nothing to wait for.
    func start() {
        guard !handlers.isEmpty || !dispatchers.isEmpty else { return }
        thread = spawnThread(named: name) { [self] in loop() }
    }

    /// Stops the thread (paused or not) and waits for it, then has its devices finish the requests still in flight
    /// (io_uring transfers): the disks are flushed next, and a write still in flight would miss the flush.
    func stop() {
        commands.close()
        acknowledgements.close()
        wake.signal()
        if let thread { pthread_join(thread, nil) }
        thread = nil
        for quiesce in quiescers { quiesce() }
    }

    private func loop() {
        var events = [epoll_event](repeating: epoll_event(), count: 32)
        var counter: UInt64 = 0
        while true {
            let count = epoll_wait(poller, &events, Int32(events.count), -1)
            if count < 0 {
                if errno == EINTR { continue }
                return
            }
            for event in events[0..<Int(count)] {
                let data = event.data.u64
                if data & Self.hostEventFlag != 0 {
                    let device = Int((data & ~Self.hostEventFlag) >> 32)
                    guard device < dispatchers.count else { continue }
                    dispatchers[device](UInt32(truncatingIfNeeded: data), Self.kind(event.events))
                    continue
                }
                let descriptor = Int32(bitPattern: UInt32(truncatingIfNeeded: data))
                _ = read(descriptor, &counter, 8)
                if descriptor == wake.descriptor {
                    guard obeyCommands() else { return }
                    continue
                }
                handlers[descriptor]?()
            }
        }
    }

    /// Carries out the queued commands; after a pause, waits for the resume. Returns false when the thread must end.
    private func obeyCommands() -> Bool {
        var paused = false
        while let next = paused ? commands.receive() : commands.poll() {
            switch next.command {
            case .pause:
                if !paused { for quiesce in quiescers { quiesce() } }
                paused = true
            case .resume:
                paused = false
            }
            acknowledgements.send(next.sequence)
        }
        return !paused && !commands.isClosed
    }

    private static func kind(_ events: UInt32) -> HostEventKind {
        var kind: HostEventKind = []
        if events & EPOLLIN.rawValue != 0 { kind.insert(.readable) }
        if events & EPOLLOUT.rawValue != 0 { kind.insert(.writable) }
        if events & (EPOLLHUP.rawValue | EPOLLERR.rawValue | EPOLLRDHUP.rawValue) != 0 { kind.insert(.hangup) }
        return kind
    }

    /// One device's view of the I/O thread: edge-triggered watches tagged with the device's index.
    private struct DeviceWatcher: HostEventWatcher {
        let poller: Int32
        let device: UInt64

        func watch(_ descriptor: Int32, token: UInt32) throws(HostEventError) {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
            event.data.u64 = IOThread.hostEventFlag | device << 32 | UInt64(token)
            guard epoll_ctl(poller, EPOLL_CTL_ADD, descriptor, &event) == 0 else {
                throw HostEventError("cannot watch descriptor \(descriptor): \(String(cString: strerror(errno)))")
            }
        }

        func unwatch(_ descriptor: Int32) {
            var event = epoll_event()
            _ = epoll_ctl(poller, EPOLL_CTL_DEL, descriptor, &event)
        }
    }
}

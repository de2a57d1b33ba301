import CSlirp
import Glibc
import Synchronization
import VirtioDevices

/// One libslirp instance and the thread that polls its sockets and runs its timers.
///
/// libslirp is not thread-safe: every call into it, and so every callback it makes, happens with `lock` held.
/// The state below marked "under `lock`" is only touched there; the poll array only by the polling thread.
/// Frames libslirp emits for the guest go into `frames`, a bounded queue, and `ready` is raised when the queue
/// stops being empty.
final class SlirpStack: @unchecked Sendable {
    /// A libslirp timer: its callback, argument and expiry (milliseconds of `clock`), when armed.
    private final class Timer {
        let callback: SlirpTimerCb
        let argument: UnsafeMutableRawPointer?
        var expiry: Int64?

        init(callback: @escaping SlirpTimerCb, argument: UnsafeMutableRawPointer?) {
            self.callback = callback
            self.argument = argument
        }
    }

    private let lock = Mutex(())
    /// Under `lock`: the instance, nil once shut down.
    private var slirp: OpaquePointer?
    /// Under `lock`: every live timer.
    private var timers: [Timer] = []
    /// Under `lock`: asks the polling thread to return.
    private var stopping = false
    /// Under `lock`: the guest errors libslirp reported; the first `loggedGuestErrors` of them reach `log`.
    private var guestErrors: UInt64 = 0
    /// Polling thread only: the descriptors of one round, `wake` first.
    private var polled: [pollfd] = []
    /// libslirp keeps a pointer to its callbacks, so they live as long as the instance.
    private let callbacks: UnsafeMutablePointer<SlirpCb>
    /// Guards `frames`, which the device empties while libslirp fills it.
    private let framesLock = Mutex(())
    /// Under `framesLock`: frames for the guest.
    private var frames: FrameQueue
    /// Raised when `frames` stops being empty.
    let ready: EventFlag
    /// Wakes the polling thread to poll a changed set of sockets or timers.
    private let wake: EventFlag
    /// Whether `wake` was raised and not yet seen by the polling thread.
    private let wakePending = Atomic(false)
    private let log: (@Sendable (String) -> Void)?
    /// Guest errors passed to `log`; later ones are only counted.
    private static let loggedGuestErrors: UInt64 = 8

    init(frameCapacity: Int, frameSize: Int, log: (@Sendable (String) -> Void)?) throws(SlirpError) {
        guard let ready = EventFlag(), let wake = EventFlag() else {
            throw SlirpError("user network: cannot create an eventfd: \(String(cString: strerror(errno)))")
        }
        self.ready = ready
        self.wake = wake
        self.log = log
        frames = FrameQueue(capacity: frameCapacity, slotSize: frameSize)
        callbacks = .allocate(capacity: 1)
        callbacks.initialize(to: Self.makeCallbacks())
        polled.reserveCapacity(64)
    }

    deinit {
        callbacks.deallocate()
    }

    /// Creates the libslirp instance from `config` (its strings and addresses are copied by libslirp) and
    /// adds `forwards`, whose default guest address is `guestAddress`.
    func start(config: inout SlirpConfig, forwards: [HostForward], guestAddress: IPv4Address) throws(SlirpError) {
        let opaque = Unmanaged.passUnretained(self).toOpaque()
        try lock.withLock { _ throws(SlirpError) in
            guard let instance = slirp_new(&config, callbacks, opaque) else {
                throw SlirpError("user network: libslirp refused its configuration")
            }
            slirp = instance
            for forward in forwards {
                let host = in_addr(s_addr: (forward.hostAddress?.value ?? 0).bigEndian)
                let guest = in_addr(s_addr: (forward.guestAddress ?? guestAddress).value.bigEndian)
                let isUDP: Int32 = forward.transport == .udp ? 1 : 0
                errno = 0
                guard
                    slirp_add_hostfwd(instance, isUDP, host, Int32(forward.hostPort), guest, Int32(forward.guestPort))
                        == 0
                else {
                    let reason = errno == 0 ? "refused" : String(cString: strerror(errno))
                    throw SlirpError(
                        "hostfwd \(forward): cannot listen on host port \(forward.hostPort) (\(reason)); pick a free port")
                }
            }
        }
    }

    /// Stops the polling loop; `shutDown` must follow once the thread has returned.
    func stop() {
        lock.withLock { _ in stopping = true }
        kick()
    }

    /// Frees the instance, closing its sockets.
    func shutDown() {
        lock.withLock { _ in
            if let slirp { slirp_cleanup(slirp) }
            slirp = nil
        }
    }

    /// Passes a frame from the guest to libslirp, then wakes the polling thread, as the frame may have opened a
    /// socket or armed a timer.
    func input(_ frame: UnsafeRawBufferPointer) {
        guard let base = frame.baseAddress?.assumingMemoryBound(to: UInt8.self), let length = Int32(exactly: frame.count)
        else { return }
        lock.withLock { _ in
            if let slirp { slirp_input(slirp, base, length) }
        }
        kick()
    }

    /// The oldest frame for the guest, copied into `buffer`; nil when none waits. `ready` is lowered before the
    /// queue is found empty, so a frame queued after that raises it again.
    func dequeue(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        if let length = framesLock.withLock({ _ in frames.pop(into: buffer) }) { return length }
        ready.lower()
        return framesLock.withLock { _ in frames.pop(into: buffer) }
    }

    /// Frames for the guest dropped because the queue was full.
    var drops: UInt64 { framesLock.withLock { _ in frames.drops } }

    /// Polls libslirp's sockets and runs its timers until `stop`.
    func run() {
        var timeout: UInt32 = 0
        while true {
            let proceed = lock.withLock { _ -> Bool in
                guard !stopping, let slirp else { return false }
                polled.removeAll(keepingCapacity: true)
                polled.append(pollfd(fd: wake.descriptor, events: Int16(POLLIN), revents: 0))
                timeout = UInt32.max
                slirp_pollfds_fill(slirp, &timeout, { descriptor, events, opaque in
                    SlirpStack.from(opaque).addPoll(descriptor, events)
                }, Unmanaged.passUnretained(self).toOpaque())
                timeout = min(timeout, nextTimerDelay())
                return true
            }
            guard proceed else { return }
            let waited = polled.withUnsafeMutableBufferPointer { descriptors in
                poll(descriptors.baseAddress, nfds_t(descriptors.count), timeout == UInt32.max ? -1 : Int32(timeout))
            }
            if polled[0].revents != 0 {
                // Consume the signal before allowing a new one, or a kick in between would be lost.
                wake.lower()
                wakePending.store(false, ordering: .sequentiallyConsistent)
            }
            lock.withLock { _ in
                guard let slirp else { return }
                slirp_pollfds_poll(slirp, waited < 0 ? 1 : 0, { index, opaque in
                    SlirpStack.from(opaque).returnedEvents(index)
                }, Unmanaged.passUnretained(self).toOpaque())
                fireTimers()
            }
        }
    }

    /// Wakes the polling thread, once per round however often it is called.
    private func kick() {
        if !wakePending.exchange(true, ordering: .sequentiallyConsistent) { wake.raise() }
    }

    private static func from(_ opaque: UnsafeMutableRawPointer?) -> SlirpStack {
        Unmanaged<SlirpStack>.fromOpaque(opaque!).takeUnretainedValue()
    }

    private static func now() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }

    /// Polling thread, under `lock`: adds a descriptor libslirp wants polled; returns its index.
    private func addPoll(_ descriptor: Int32, _ events: Int32) -> Int32 {
        var wanted: Int32 = 0
        if events & Int32(SLIRP_POLL_IN) != 0 { wanted |= Int32(POLLIN) }
        if events & Int32(SLIRP_POLL_OUT) != 0 { wanted |= Int32(POLLOUT) }
        if events & Int32(SLIRP_POLL_PRI) != 0 { wanted |= Int32(POLLPRI) }
        polled.append(pollfd(fd: descriptor, events: Int16(truncatingIfNeeded: wanted), revents: 0))
        return Int32(polled.count - 1)
    }

    /// Polling thread, under `lock`: what poll reported for the descriptor at `index`, in libslirp's terms.
    private func returnedEvents(_ index: Int32) -> Int32 {
        guard index > 0, Int(index) < polled.count else { return 0 }
        let events = Int32(polled[Int(index)].revents)
        var result: Int32 = 0
        if events & Int32(POLLIN) != 0 { result |= Int32(SLIRP_POLL_IN) }
        if events & Int32(POLLOUT) != 0 { result |= Int32(SLIRP_POLL_OUT) }
        if events & Int32(POLLPRI) != 0 { result |= Int32(SLIRP_POLL_PRI) }
        if events & Int32(POLLERR) != 0 { result |= Int32(SLIRP_POLL_ERR) }
        if events & Int32(POLLHUP) != 0 { result |= Int32(SLIRP_POLL_HUP) }
        return result
    }

    /// Under `lock`: milliseconds until the earliest armed timer, or UInt32.max when none is armed.
    private func nextTimerDelay() -> UInt32 {
        let now = Self.now() / 1_000_000
        var delay = UInt32.max
        for timer in timers {
            guard let expiry = timer.expiry else { continue }
            delay = min(delay, UInt32(clamping: max(0, expiry - now)))
        }
        return delay
    }

    /// Under `lock`: runs the timers that are due, each at most once; a callback may re-arm or free timers.
    private func fireTimers() {
        let now = Self.now() / 1_000_000
        for _ in 0..<timers.count {
            guard let due = timers.first(where: { $0.expiry.map { $0 <= now } ?? false }) else { return }
            due.expiry = nil
            due.callback(due.argument)
        }
    }

    /// The callbacks libslirp makes, each under `lock`.
    private static func makeCallbacks() -> SlirpCb {
        var callbacks = SlirpCb()
        callbacks.send_packet = { frame, length, opaque in
            let stack = SlirpStack.from(opaque)
            let wasEmpty = stack.framesLock.withLock { _ in
                stack.frames.push(UnsafeRawBufferPointer(start: frame, count: length))
            }
            if wasEmpty { stack.ready.raise() }
            return length
        }
        callbacks.guest_error = { message, opaque in
            let stack = SlirpStack.from(opaque)
            stack.guestErrors += 1
            if stack.guestErrors <= SlirpStack.loggedGuestErrors, let message {
                stack.log?("user network: guest error: \(String(cString: message))")
            }
        }
        callbacks.clock_get_ns = { _ in SlirpStack.now() }
        callbacks.timer_new = { callback, argument, opaque in
            guard let callback else { return nil }
            let stack = SlirpStack.from(opaque)
            let timer = Timer(callback: callback, argument: argument)
            stack.timers.append(timer)
            return Unmanaged.passUnretained(timer).toOpaque()
        }
        callbacks.timer_free = { handle, opaque in
            guard let handle else { return }
            let timer = Unmanaged<Timer>.fromOpaque(handle).takeUnretainedValue()
            SlirpStack.from(opaque).timers.removeAll { $0 === timer }
        }
        callbacks.timer_mod = { handle, expiry, opaque in
            guard let handle else { return }
            Unmanaged<Timer>.fromOpaque(handle).takeUnretainedValue().expiry = expiry
            SlirpStack.from(opaque).kick()
        }
        // Descriptors are collected afresh each round by slirp_pollfds_fill.
        callbacks.register_poll_fd = { _, _ in }
        callbacks.unregister_poll_fd = { _, _ in }
        callbacks.notify = { opaque in SlirpStack.from(opaque).kick() }
        return callbacks
    }
}

/// Why the user-mode network could not start; the description names the problem and the fix.
public struct SlirpError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) { self.description = description }
}

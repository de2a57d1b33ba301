import CURing
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What asynchronous block I/O needs from a submission and completion ring: `IOURing` is the kernel's; tests
/// supply their own to decide when and how each transfer completes.
public protocol BlockIORing: AnyObject {
    /// An eventfd signalled when completions are ready.
    var eventDescriptor: Int32 { get }
    /// Entries queued by `prepare` that have not been submitted yet.
    var unsubmitted: Int { get }
    /// Whether completions are ready to reap.
    var hasCompletions: Bool { get }
    /// Whether completions signal `eventDescriptor`; an owner that reaps by itself for a while turns this off.
    var signalsCompletions: Bool { get set }
    /// Queues a vectored read (or write, with `write`) of the `count` buffers at `vectors` from `offset` in
    /// `descriptor`, its completion tagged `tag`; with `inWorker`, the kernel hands it to one of its I/O workers at
    /// once instead of first trying it inline. Returns false when the submission queue is full.
    func prepare(
        write: Bool, descriptor: Int32, vectors: UnsafePointer<iovec>, count: Int, offset: UInt64, tag: UInt64,
        inWorker: Bool
    ) -> Bool
    /// Hands every queued entry to the kernel.
    func submit() throws(DiskError)
    /// Calls `body` with the tag and result (bytes transferred, or a negative errno) of each completion ready
    /// now, without waiting. `body` may queue new entries.
    func reap(_ body: (_ tag: UInt64, _ result: Int32) -> Void)
    /// Asks that every submitted transfer end soon: those that wait (on a pipe, a socket) complete with ECANCELED.
    func cancelSubmitted() throws(DiskError)
    /// Blocks until a completion is ready (to reap with `reap`).
    func waitForCompletion() throws(DiskError)
    /// Resets the eventfd's count, before reaping what it announced.
    func clearEvent()
}

/// An io_uring (through liburing) for block I/O: vectored reads and writes queued as submission entries, handed to
/// the kernel together by one `submit()`, and reaped as completions in whatever order they finish. The kernel
/// signals `eventDescriptor`, an eventfd registered with the ring, for every completion, so that a thread waiting
/// in epoll learns of them.
///
/// Not thread-safe: one owner prepares, submits and reaps. The buffers an entry points at must stay valid until
/// its completion is reaped.
public final class IOURing: BlockIORing, @unchecked Sendable {
    private let ring: UnsafeMutablePointer<io_uring>
    /// The eventfd signalled on each completion (non-blocking); owned, closed at deinit.
    public let eventDescriptor: Int32

    /// A ring of `entries` submission entries (a power of two; the completion queue holds twice as many). Fails
    /// where io_uring is unavailable: an old kernel, `kernel.io_uring_disabled`, or a seccomp filter.
    public init(entries: UInt32) throws(DiskError) {
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        let created = io_uring_queue_init(entries, ring, 0)
        guard created == 0 else {
            ring.deallocate()
            throw .io("io_uring_queue_init", errno: -created)
        }
        let event = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        let registered = event < 0 ? -errno : io_uring_register_eventfd(ring, event)
        guard registered == 0 else {
            if event >= 0 { close(event) }
            io_uring_queue_exit(ring)
            ring.deallocate()
            throw .io(event < 0 ? "eventfd" : "io_uring_register_eventfd", errno: -registered)
        }
        self.ring = ring
        eventDescriptor = event
    }

    /// Tears the ring down; the kernel cancels what is still in flight. Reap every completion first so that no
    /// transfer outlives the buffers it uses.
    deinit {
        io_uring_queue_exit(ring)
        close(eventDescriptor)
        ring.deallocate()
    }

    public func prepare(
        write: Bool, descriptor: Int32, vectors: UnsafePointer<iovec>, count: Int, offset: UInt64, tag: UInt64,
        inWorker: Bool
    ) -> Bool {
        guard let entry = io_uring_get_sqe(ring) else { return false }
        if write {
            io_uring_prep_writev(entry, descriptor, vectors, UInt32(count), offset)
        } else {
            io_uring_prep_readv(entry, descriptor, vectors, UInt32(count), offset)
        }
        io_uring_sqe_set_data64(entry, tag)
        if inWorker { io_uring_sqe_set_flags(entry, UInt32(1 << IOSQE_ASYNC_BIT)) }
        return true
    }

    public var unsubmitted: Int { Int(io_uring_sq_ready(ring)) }

    public var hasCompletions: Bool { io_uring_cq_ready(ring) > 0 }

    public var signalsCompletions: Bool {
        get { io_uring_cq_eventfd_enabled(ring) }
        set { _ = io_uring_cq_eventfd_toggle(ring, newValue) }
    }

    /// One system call for every queued entry (retried when interrupted).
    public func submit() throws(DiskError) {
        while unsubmitted > 0 {
            let result = io_uring_submit(ring)
            if result == -EINTR { continue }
            guard result >= 0 else { throw .io("io_uring_submit", errno: -result) }
        }
    }

    public func reap(_ body: (_ tag: UInt64, _ result: Int32) -> Void) {
        var entry: UnsafeMutablePointer<io_uring_cqe>?
        while io_uring_peek_cqe(ring, &entry) == 0, let completion = entry {
            let tag = completion.pointee.user_data
            let result = completion.pointee.res
            io_uring_cqe_seen(ring, completion)
            body(tag, result)
        }
    }

    /// One cancellation entry that matches every request in flight; its own completion is tagged `cancelTag`.
    public func cancelSubmitted() throws(DiskError) {
        guard let entry = io_uring_get_sqe(ring) else { throw .io("io_uring_get_sqe", errno: EBUSY) }
        io_uring_prep_cancel64(entry, 0, Int32(IORING_ASYNC_CANCEL_ANY))
        io_uring_sqe_set_data64(entry, Self.cancelTag)
        try submit()
    }

    /// The tag of the completion of `cancelSubmitted`'s own entry.
    public static let cancelTag = UInt64.max

    public func waitForCompletion() throws(DiskError) {
        var entry: UnsafeMutablePointer<io_uring_cqe>?
        while true {
            let result = io_uring_wait_cqe(ring, &entry)
            if result == 0 { return }
            if result != -EINTR { throw .io("io_uring_wait_cqe", errno: -result) }
        }
    }

    public func clearEvent() {
        var count: UInt64 = 0
        _ = read(eventDescriptor, &count, 8)
    }
}

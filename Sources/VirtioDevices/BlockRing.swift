import Glibc
import Qcow2
import Virtio

/// Why a block device cannot carry its I/O through io_uring.
public enum BlockRingError: Error, CustomStringConvertible, Sendable {
    /// Only a raw image in a host file, its format given rather than probed, goes through the ring (qcow2 maps and
    /// allocates clusters synchronously; a probed raw image's first-sector writes are checked by its backend).
    case notRawFile
    /// The kernel refused the ring (io_uring disabled, seccomp, an old kernel).
    case unavailable(DiskError)
    /// The ring's eventfd could not be watched.
    case watch(HostEventError)

    public var description: String {
        switch self {
        case .notRawFile: return "only raw images whose format is given go through io_uring"
        case .unavailable(let error): return "io_uring is unavailable: \(error)"
        case .watch(let error): return "io_uring completions cannot be watched: \(error)"
        }
    }
}

/// The reads and writes of a virtio-blk device over a raw image, carried out asynchronously through an `IOURing`.
///
/// A pass over the queue starts each request as one vectored transfer whose iovecs point straight into guest
/// memory, and submits them together; completions, announced by the ring's eventfd (watched on the device's I/O
/// thread with token `eventToken`), complete their requests in the order they finish. A short transfer is
/// resubmitted for the rest; a read that meets the end of the file reads zeros there, as `PosixFile` does.
/// Request slots and iovecs are allocated once, so that the hot path allocates nothing.
///
/// With O_DIRECT (`cache=none`) only requests whose buffers, offset and length keep `PosixFile.directAlignment`
/// go through the ring; the device runs the others through the backend, which bounces them.
public final class BlockRingEngine: @unchecked Sendable {
    /// The host-event token of the ring's eventfd.
    public static let eventToken: UInt32 = 0

    /// One request in flight.
    private struct Request {
        var head: UInt16 = 0
        var isWrite = false
        /// The request's status byte in guest memory.
        var status: UnsafeMutableRawPointer?
        /// Bytes the request moves in all.
        var length = 0
        /// Bytes still to move, from `offset` in the file and from vector `firstVector` on.
        var remaining = 0
        var offset: UInt64 = 0
        var firstVector = 0
        var vectorCount = 0
        /// Whether the request's buffers fit a slot (and keep O_DIRECT's alignment).
        var fitsRing = true
    }

    let ring: any BlockIORing
    private let watcher: any HostEventWatcher
    /// The image's descriptor, and its owner, which keeps it open while transfers use it.
    private let descriptor: Int32
    private let file: PosixFile?
    /// Whether the descriptor is O_DIRECT, which wants `PosixFile.directAlignment`.
    private let isDirect: Bool
    private let requests: UnsafeMutableBufferPointer<Request>
    /// `vectorsPerRequest` iovecs per request slot; pages of slots never used stay untouched.
    private let vectors: UnsafeMutablePointer<iovec>
    private let vectorsPerRequest: Int
    /// Free request slots, a stack.
    private let free: UnsafeMutableBufferPointer<UInt16>
    private var freeCount: Int
    /// The slot `begin()` took, filled by `add(_:)` until `commit` or `abandon`.
    private var current = 0
    /// Set when the kernel refused a submission: the engine stops taking requests.
    public private(set) var isBroken = false

    /// Page-cache transfers of at least this many bytes, while others are in flight, go straight to the kernel's
    /// I/O workers, so that their copies run in parallel rather than one after another inside `submit` on the
    /// device's thread; smaller ones, or a lone one, are cheaper inline. (O_DIRECT transfers are asynchronous in the
    /// block layer already.)
    static let workerThreshold = 32 << 10

    /// Most requests in flight, and most buffers in one request; a device's queue may hold more of either, which
    /// then wait for a slot or go through the backend.
    public static let maximumSlots = 256

    /// An engine for `backend`, a raw image in a host file, with room for as many requests in flight of as many
    /// buffers each as a queue of `queueSize` holds (up to `maximumSlots`), watching completions through `watcher`.
    public convenience init(backend: any BlockBackend, queueSize: UInt16, watcher: any HostEventWatcher) throws(BlockRingError) {
        guard let raw = backend as? RawBackend, !raw.guardsFirstSector, let file = raw.file as? PosixFile else { throw .notRawFile }
        let ring: IOURing
        do {
            ring = try IOURing(entries: UInt32(min(Int(queueSize), Self.maximumSlots)))
        } catch {
            throw .unavailable(error)
        }
        try self.init(ring: ring, file: file, descriptor: file.fd, direct: file.cache == .none, queueSize: queueSize,
                      watcher: watcher)
    }

    /// An engine over `ring` for transfers on `descriptor` (kept open by `file`), as the public initializer.
    init(
        ring: any BlockIORing, file: PosixFile?, descriptor: Int32, direct: Bool, queueSize: UInt16,
        watcher: any HostEventWatcher
    ) throws(BlockRingError) {
        let slots = min(Int(queueSize), Self.maximumSlots)
        do {
            try watcher.watch(ring.eventDescriptor, token: Self.eventToken)
        } catch {
            throw .watch(error)
        }
        self.ring = ring
        self.watcher = watcher
        self.file = file
        self.descriptor = descriptor
        isDirect = direct
        requests = .allocate(capacity: slots)
        requests.initialize(repeating: Request())
        vectorsPerRequest = slots
        vectors = .allocate(capacity: slots * slots)
        free = .allocate(capacity: slots)
        for slot in 0..<slots { free[slot] = UInt16(slots - 1 - slot) }
        freeCount = slots
    }

    deinit {
        cancelAll()
        watcher.unwatch(ring.eventDescriptor)
        requests.deallocate()
        vectors.deallocate()
        free.deallocate()
    }

    /// Requests started and not yet completed.
    public var inFlight: Int { requests.count - freeCount }
    /// Whether another request can start.
    public var hasRoom: Bool { freeCount > 0 && !isBroken }

    /// Takes a slot for a new request; call only when `hasRoom`.
    func begin() {
        freeCount -= 1
        current = Int(free[freeCount])
        requests[current] = Request()
    }

    /// Adds a buffer to the request begun last.
    func add(_ piece: UnsafeMutableRawBufferPointer) {
        let request = requests[current]
        guard request.fitsRing, request.vectorCount < vectorsPerRequest else {
            requests[current].fitsRing = false
            return
        }
        vectors[current * vectorsPerRequest + request.vectorCount] = iovec(iov_base: piece.baseAddress, iov_len: piece.count)
        requests[current].vectorCount += 1
        requests[current].length += piece.count
        if isDirect {
            let mask = PosixFile.directAlignment - 1
            requests[current].fitsRing = Int(bitPattern: piece.baseAddress) & mask == 0 && piece.count & mask == 0
        }
    }

    /// Gives back the slot of the request begun last, unstarted.
    func abandon() {
        free[freeCount] = UInt16(current)
        freeCount += 1
    }

    /// Queues the request begun last: a read (or write) at `offset`, completing with its status byte at `status`
    /// and `head` in the used ring. Returns false, giving the slot back, when the request cannot go through the
    /// ring (more buffers than a slot holds, or unaligned for O_DIRECT); the caller then carries it out itself.
    func commit(head: UInt16, isWrite: Bool, offset: UInt64, status: UnsafeMutableRawPointer) -> Bool {
        let aligned = !isDirect || offset & UInt64(PosixFile.directAlignment - 1) == 0
        guard requests[current].fitsRing, aligned else {
            abandon()
            return false
        }
        requests[current].head = head
        requests[current].isWrite = isWrite
        requests[current].offset = offset
        requests[current].remaining = requests[current].length
        requests[current].status = status
        queue(current)
        return true
    }

    /// Queues the rest of slot `slot`'s transfer. The submission queue has an entry per slot, so it has room.
    private func queue(_ slot: Int) {
        let request = requests[slot]
        let queued = ring.prepare(
            write: request.isWrite, descriptor: descriptor, vectors: vectors + slot * vectorsPerRequest + request.firstVector,
            count: request.vectorCount - request.firstVector, offset: request.offset, tag: UInt64(slot),
            inWorker: !isDirect && request.remaining >= Self.workerThreshold && inFlight > 1)
        precondition(queued, "io_uring submission queue full with a free request slot")
    }

    /// Submits every queued transfer at once. A refusal breaks the engine (`isBroken`).
    func submit() {
        guard !isBroken else { return }
        do {
            try ring.submit()
        } catch {
            isBroken = true
        }
    }

    /// Blocks until a completion is ready to reap; false (and the engine broken) when the ring refuses the wait.
    func waitForCompletion() -> Bool {
        guard !isBroken, (try? ring.waitForCompletion()) != nil else {
            isBroken = true
            return false
        }
        return true
    }

    /// Resets the ring's eventfd, before the completions it announced are reaped.
    func clearEvent() { ring.clearEvent() }

    /// Whether completions are ready to reap.
    var hasCompletions: Bool { ring.hasCompletions }

    /// Whether completions signal the eventfd: off while the device serves its queue and reaps by itself, which
    /// spares the I/O thread a wake-up for each completion that arrives meanwhile (inline ones above all).
    var signalsCompletions: Bool {
        get { ring.signalsCompletions }
        set { ring.signalsCompletions = newValue }
    }

    /// Completes every request whose transfer finished: stores its status (`ok`, or `ioError` when the transfer
    /// failed) and calls `complete` with its head and used length. Short transfers are queued again for the rest
    /// (call `submit()` after).
    func reap(ok: UInt8, ioError: UInt8, _ complete: (_ head: UInt16, _ usedLength: UInt32) -> Void) {
        ring.reap { tag, result in
            let slot = Int(tag)
            guard slot < requests.count else { return }
            var request = requests[slot]
            let moved = Int(result)
            let failed: Bool
            if result == -EINTR || result == -EAGAIN {
                queue(slot)
                return
            } else if moved == 0 && !request.isWrite {
                // The file ended (it shrank under the image): the rest reads as zeros.
                zeroRest(of: request, slot: slot)
                request.remaining = 0
                failed = false
            } else if moved > 0 && moved < request.remaining {
                advance(slot, by: moved)
                queue(slot)
                return
            } else {
                failed = moved != request.remaining
                if !failed { request.remaining = 0 }
            }
            request.status!.storeBytes(of: failed ? ioError : ok, as: UInt8.self)
            let filled = request.isWrite ? 0 : request.length - request.remaining
            free[freeCount] = UInt16(slot)
            freeCount += 1
            complete(request.head, UInt32(clamping: filled + 1))
        }
    }

    /// Moves slot `slot` past `count` more bytes moved.
    private func advance(_ slot: Int, by count: Int) {
        var left = count
        let base = vectors + slot * vectorsPerRequest
        var index = requests[slot].firstVector
        while left > 0 {
            let length = base[index].iov_len
            if left < length {
                base[index].iov_base += left
                base[index].iov_len = length - left
                break
            }
            left -= length
            index += 1
        }
        requests[slot].firstVector = index
        requests[slot].offset += UInt64(count)
        requests[slot].remaining -= count
    }

    /// Zeroes what slot `slot`'s read has not filled.
    private func zeroRest(of request: Request, slot: Int) {
        let base = vectors + slot * vectorsPerRequest
        for index in request.firstVector..<request.vectorCount {
            base[index].iov_base.initializeMemory(as: UInt8.self, repeating: 0, count: base[index].iov_len)
        }
    }

    /// Ends every transfer in flight and drops them, their requests uncompleted (the device is resetting or
    /// failing), waiting for each so that none writes guest memory afterwards.
    func cancelAll() {
        guard inFlight > 0 else { return }
        submit()
        if !isBroken, (try? ring.cancelSubmitted()) == nil { isBroken = true }
        while inFlight > 0 {
            if isBroken || (try? ring.waitForCompletion()) == nil { break }
            ring.reap { tag, _ in
                guard Int(tag) < requests.count else { return }
                free[freeCount] = UInt16(tag)
                freeCount += 1
            }
        }
        ring.clearEvent()
    }
}

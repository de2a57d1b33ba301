import Glibc
import Qcow2
import Synchronization
import Virtio

/// One transfer between guest memory and a block backend.
struct BlockIOOperation {
    var isWrite: Bool
    var buffer: UnsafeMutableRawPointer
    var length: Int
    var offset: UInt64
    /// Set by the pool when the backend refused the transfer.
    var failed = false
}

/// Worker threads that carry out a batch of block transfers at once, so that a device on a slow medium (O_DIRECT
/// on a real disk) keeps as many requests in flight as the guest gave it instead of one. The calling thread takes
/// part; `run` returns when every transfer is done. Allocation-free per batch.
final class BlockIOPool: Sendable {
    /// What the workers share: the batch, who takes the next transfer, and how many are done.
    private final class Shared: @unchecked Sendable {
        let backend: any BlockBackend
        let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        let work = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        let finished = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        /// Guarded by `mutex`: the batch's generation (bumped for each batch), how many workers are inside a
        /// batch (the caller waits for none, so no worker ever runs on with a finished batch), and shutdown.
        var generation = 0
        var active = 0
        var shuttingDown = false
        /// The current batch; set under `mutex` before `generation` moves, taken by workers under it.
        var operations = UnsafeMutableBufferPointer<BlockIOOperation>(start: nil, count: 0)
        /// The generation of the batch being taken (high 32 bits) and its next transfer (low 32 bits): a worker
        /// that comes late to a finished batch cannot take a transfer of the next one.
        let cursor = Atomic<UInt64>(0)
        let done = Atomic<Int>(0)

        init(backend: any BlockBackend) {
            self.backend = backend
            pthread_mutex_init(mutex, nil)
            pthread_cond_init(work, nil)
            pthread_cond_init(finished, nil)
        }

        deinit {
            pthread_cond_destroy(work)
            pthread_cond_destroy(finished)
            pthread_mutex_destroy(mutex)
            mutex.deallocate()
            work.deallocate()
            finished.deallocate()
        }

        /// The next transfer of batch `generation`, or nil when it has none left (or is over).
        private func take(generation: Int, count: Int) -> Int? {
            let tag = UInt64(truncatingIfNeeded: generation) << 32
            var current = cursor.load(ordering: .relaxed)
            while true {
                let index = Int(current & 0xFFFF_FFFF)
                guard current & ~0xFFFF_FFFF == tag, index < count else { return nil }
                let (exchanged, original) = cursor.compareExchange(
                    expected: current, desired: current + 1, ordering: .relaxed)
                if exchanged { return index }
                current = original
            }
        }

        /// Takes transfers of batch `generation` until none are left; the last one to finish wakes the caller.
        func drain(_ operations: UnsafeMutableBufferPointer<BlockIOOperation>, generation: Int) {
            let count = operations.count
            while let index = take(generation: generation, count: count) {
                let operation = operations[index]
                do {
                    if operation.isWrite {
                        try backend.write(at: operation.offset, from: UnsafeRawBufferPointer(start: operation.buffer, count: operation.length))
                    } else {
                        try backend.read(at: operation.offset, into: UnsafeMutableRawBufferPointer(start: operation.buffer, count: operation.length))
                    }
                } catch {
                    operations[index].failed = true
                }
                if done.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue == count {
                    pthread_mutex_lock(mutex)
                    pthread_cond_signal(finished)
                    pthread_mutex_unlock(mutex)
                }
            }
        }

        func workerLoop() {
            var seen = 0
            pthread_mutex_lock(mutex)
            while true {
                while generation == seen && !shuttingDown { pthread_cond_wait(work, mutex) }
                if shuttingDown { break }
                seen = generation
                let batch = operations
                active += 1
                pthread_mutex_unlock(mutex)
                drain(batch, generation: seen)
                pthread_mutex_lock(mutex)
                active -= 1
                if active == 0 { pthread_cond_signal(finished) }
            }
            pthread_mutex_unlock(mutex)
        }
    }

    private let shared: Shared
    private let threads: [pthread_t]

    /// A pool of `threads` workers (at least 1) over `backend`; nil when a thread cannot be started.
    init?(threads count: Int, backend: any BlockBackend) {
        let shared = Shared(backend: backend)
        var threads: [pthread_t] = []
        for _ in 0..<max(1, count) {
            let context = Unmanaged.passRetained(shared).toOpaque()
            var thread = pthread_t()
            let started = pthread_create(&thread, nil, { context in
                let shared = Unmanaged<Shared>.fromOpaque(context!).takeRetainedValue()
                shared.workerLoop()
                return nil
            }, context)
            guard started == 0 else {
                Unmanaged<Shared>.fromOpaque(context).release()
                Self.shutDown(shared, threads)
                return nil
            }
            threads.append(thread)
        }
        self.shared = shared
        self.threads = threads
    }

    deinit {
        Self.shutDown(shared, threads)
    }

    private static func shutDown(_ shared: Shared, _ threads: [pthread_t]) {
        pthread_mutex_lock(shared.mutex)
        shared.shuttingDown = true
        pthread_cond_broadcast(shared.work)
        pthread_mutex_unlock(shared.mutex)
        for thread in threads { pthread_join(thread, nil) }
    }

    /// Carries out every transfer in `operations`, in parallel, marking the ones that failed.
    func run(_ operations: UnsafeMutableBufferPointer<BlockIOOperation>) {
        guard !operations.isEmpty else { return }
        let shared = shared
        pthread_mutex_lock(shared.mutex)
        shared.operations = operations
        shared.done.store(0, ordering: .relaxed)
        shared.generation = (shared.generation + 1) & 0xFFFF_FFFF
        let generation = shared.generation
        shared.cursor.store(UInt64(generation) << 32, ordering: .releasing)
        // The caller takes one transfer itself: wake only as many workers as there are others.
        for _ in 0..<min(operations.count - 1, threads.count) { pthread_cond_signal(shared.work) }
        pthread_mutex_unlock(shared.mutex)
        shared.drain(operations, generation: generation)
        pthread_mutex_lock(shared.mutex)
        while shared.done.load(ordering: .acquiring) < operations.count || shared.active > 0 {
            pthread_cond_wait(shared.finished, shared.mutex)
        }
        shared.operations = UnsafeMutableBufferPointer(start: nil, count: 0)
        pthread_mutex_unlock(shared.mutex)
    }
}

/// The read and write requests of one pass over the queue, waiting to be carried out together by a `BlockIOPool`:
/// their transfers, and what completing each request takes (status byte, used length).
final class BlockIOBatch: @unchecked Sendable {
    struct Request {
        var head: UInt16
        var status: UnsafeMutableRawPointer
        var written: UInt32
        var operations: Range<Int>
    }

    let pool: BlockIOPool
    private let operations: UnsafeMutableBufferPointer<BlockIOOperation>
    private(set) var operationCount = 0
    private var requests: [Request] = []
    private var firstOperation = 0

    /// Room for `capacity` transfers (at least a chain's worth) and as many requests.
    init(pool: BlockIOPool, capacity: Int) {
        self.pool = pool
        operations = .allocate(capacity: capacity)
        requests.reserveCapacity(capacity)
    }

    deinit { operations.deallocate() }

    var isEmpty: Bool { requests.isEmpty }

    /// Whether `count` more transfers fit.
    func hasRoom(for count: Int) -> Bool { operationCount + count <= operations.count && requests.count < operations.count }

    /// Starts a request's transfers.
    func beginRequest() { firstOperation = operationCount }

    func add(_ operation: BlockIOOperation) {
        operations[operationCount] = operation
        operationCount += 1
    }

    /// Ends the request begun last: it completes once its transfers are done.
    func endRequest(head: UInt16, status: UnsafeMutableRawPointer, written: UInt32) {
        requests.append(Request(head: head, status: status, written: written, operations: firstOperation..<operationCount))
    }

    /// Drops the transfers of the request begun last (it failed before it was queued).
    func abandonRequest() { operationCount = firstOperation }

    /// Drops everything queued, unperformed (the device is failing or resetting).
    func discardAll() {
        requests.removeAll(keepingCapacity: true)
        operationCount = 0
    }

    /// Carries out every transfer, then completes each request (OK, or IOERR when a transfer failed) on `queue`.
    func run(completingOn queue: inout SplitQueue, okStatus: UInt8, errorStatus: UInt8) {
        pool.run(UnsafeMutableBufferPointer(rebasing: operations[0..<operationCount]))
        for request in requests {
            let failed = operations[request.operations].contains { $0.failed }
            request.status.storeBytes(of: failed ? errorStatus : okStatus, as: UInt8.self)
            queue.addUsed(head: request.head, length: request.written + 1)
        }
        requests.removeAll(keepingCapacity: true)
        operationCount = 0
    }
}

import GuestMemory
import Qcow2
import Virtio

/// A virtio-blk device (VIRTIO 1.2 §5.2) over any `BlockBackend`: one request queue, 512-byte sectors.
///
/// Each request is a 16-byte header (type, reserved, sector) in the device-readable buffers, then data, then a
/// one-byte status in the last device-writable byte. Data moves straight between guest memory and the backend,
/// segment by segment. A chain that breaks the ring rules, has no status byte or a header shorter than 16 bytes
/// puts the device in DEVICE_NEEDS_RESET; a well-formed request the device cannot honour (out of range, wrong
/// buffer directions, unsupported type, backend failure) completes with IOERR or UNSUPP and the queue goes on.
///
/// A notification handles at most one queue's worth of chains; chains left over wait for the next notification.
/// Reads and writes run in one of three ways. With an io_uring (`ring`, raw images) a pass's reads and writes are
/// submitted together and complete asynchronously, in the order they finish, when the ring's eventfd reports them
/// (`hostEvent`); a request of another type waits, held, until every read and write before it has completed, so
/// that a FLUSH covers them, and the requests after it wait for it. With I/O workers (`ioWorkers` > 0, for
/// backends on slow media such as O_DIRECT on a disk) the reads and writes of one pass go to the backend together,
/// in parallel, and complete when all are done; other requests wait for the reads and writes before them.
/// Otherwise each request runs in turn on the calling thread.
public struct Block: VirtioDevice {
    /// Device-specific feature bits (VIRTIO 1.2 §5.2.3).
    public enum Feature {
        /// VIRTIO_BLK_F_SEG_MAX: `seg_max` is valid.
        public static let segmentMaximum = VirtioFeatures(bit: 2)
        /// VIRTIO_BLK_F_RO: the device is read-only.
        public static let readOnly = VirtioFeatures(bit: 5)
        /// VIRTIO_BLK_F_BLK_SIZE: `blk_size` is valid.
        public static let blockSize = VirtioFeatures(bit: 6)
        /// VIRTIO_BLK_F_FLUSH: the FLUSH command is supported.
        public static let flush = VirtioFeatures(bit: 9)
        /// VIRTIO_BLK_F_DISCARD: the DISCARD command is supported.
        public static let discard = VirtioFeatures(bit: 13)
        /// VIRTIO_BLK_F_WRITE_ZEROES: the WRITE_ZEROES command is supported.
        public static let writeZeroes = VirtioFeatures(bit: 14)
    }

    /// Request types (VIRTIO 1.2 §5.2.6).
    public enum RequestType {
        public static let read: UInt32 = 0
        public static let write: UInt32 = 1
        public static let flush: UInt32 = 4
        public static let getID: UInt32 = 8
        public static let discard: UInt32 = 11
        public static let writeZeroes: UInt32 = 13
    }

    /// Request status values.
    public enum Status {
        public static let ok: UInt8 = 0
        public static let ioError: UInt8 = 1
        public static let unsupported: UInt8 = 2
    }

    /// The queue size a device offers unless told otherwise.
    public static let defaultQueueSize: UInt16 = 256
    /// The sector size every request counts in.
    public static let sectorSize: UInt64 = 512
    /// Bytes of the GET_ID answer.
    public static let serialLength = 20
    /// Largest DISCARD or WRITE_ZEROES request, in sectors (64 MiB), which bounds the time one request takes.
    public static let maximumZeroingSectors: UInt32 = 1 << 17
    /// Discard alignment advertised to the driver, in sectors (4 KiB).
    public static let discardAlignment: UInt32 = 8
    /// Size of the configuration space: up to `write_zeroes_may_unmap` and its padding (secure erase is not offered).
    private static let configurationLength = 60
    /// Bytes of a request header and of a discard / write-zeroes segment.
    private static let headerLength: UInt64 = 16

    private let memory: GuestMemory
    private let backend: any BlockBackend
    private let isReadOnly: Bool
    private let queueSize: UInt16
    /// The serial number, zero-padded to `serialLength` bytes.
    private let serial: [UInt8]
    /// Capacity in sectors.
    public let capacity: UInt64
    private var negotiated: VirtioFeatures = []
    private var queue: SplitQueue?
    private var interrupt: (any InterruptSignal)?
    private var chain: DescriptorChain
    /// The pass's reads and writes, when the device has I/O workers.
    private let batch: BlockIOBatch?
    /// Asynchronous reads and writes, when the device has an io_uring.
    private let ring: BlockRingEngine?
    /// A request that waits for the ring's reads and writes in flight (valid while `isHolding`).
    private var heldChain: DescriptorChain
    private var isHolding = false

    /// Why a request could not complete normally.
    private enum Failure: Error {
        /// Complete the request with this status.
        case status(UInt8)
        /// The chain is malformed: reset the device.
        case ring(String)
    }

    /// A block device backed by `backend`; `serial` is truncated to 20 bytes of UTF-8. The queue holds up to
    /// `queueSize` descriptors, a power of two of at least 4. Reads and writes go through `ring` when given (made
    /// for `backend`); else `ioWorkers` threads (none by default) carry them out in parallel; should they fail to
    /// start, requests run on the calling thread.
    public init(
        memory: GuestMemory, backend: any BlockBackend, readOnly: Bool, serial: String,
        queueSize: UInt16 = defaultQueueSize, ioWorkers: Int = 0, ring: BlockRingEngine? = nil
    ) {
        precondition(
            queueSize >= 4 && queueSize <= SplitQueue.maximumSize && queueSize & (queueSize - 1) == 0,
            "queue size \(queueSize) is not a power of two between 4 and \(SplitQueue.maximumSize)"
        )
        self.memory = memory
        self.backend = backend
        isReadOnly = readOnly
        self.queueSize = queueSize
        var bytes = Array(serial.utf8.prefix(Self.serialLength))
        bytes.append(contentsOf: repeatElement(0, count: Self.serialLength - bytes.count))
        self.serial = bytes
        capacity = backend.virtualSize / Self.sectorSize
        chain = DescriptorChain(capacity: Int(queueSize))
        heldChain = DescriptorChain(capacity: ring == nil ? 0 : Int(queueSize))
        self.ring = ring
        batch = ring == nil && ioWorkers > 0
            ? BlockIOPool(threads: ioWorkers, backend: backend).map { BlockIOBatch(pool: $0, capacity: 2 * Int(queueSize)) }
            : nil
    }

    public var deviceType: VirtioDeviceType { .block }

    public var features: VirtioFeatures {
        var offered: VirtioFeatures = [
            .version1, .eventIndex, .indirectDescriptors, Feature.segmentMaximum, Feature.blockSize, Feature.flush,
        ]
        offered.formUnion(isReadOnly ? Feature.readOnly : [Feature.discard, Feature.writeZeroes])
        return offered
    }

    public var queueCount: Int { 1 }
    public func maximumQueueSize(_ queue: Int) -> UInt16 { queue == 0 ? queueSize : 0 }
    public var configurationSize: Int { Self.configurationLength }

    public func readConfiguration(offset: Int, into buffer: UnsafeMutableRawBufferPointer) {
        for index in buffer.indices {
            let (position, overflow) = offset.addingReportingOverflow(index)
            buffer[index] = overflow ? 0 : configurationByte(position)
        }
    }

    /// The configuration byte at `offset` (VIRTIO 1.2 §5.2.4, little-endian); absent fields read as zero.
    private func configurationByte(_ offset: Int) -> UInt8 {
        let start: Int
        let value: UInt64
        let zeroing = isReadOnly ? 0 : UInt64(Self.maximumZeroingSectors)
        switch offset {
        case 0..<8: (start, value) = (0, capacity)  // capacity
        case 12..<16: (start, value) = (12, UInt64(queueSize) - 2)  // seg_max
        case 20..<24: (start, value) = (20, Self.sectorSize)  // blk_size
        case 36..<40: (start, value) = (36, zeroing)  // max_discard_sectors
        case 40..<44: (start, value) = (40, isReadOnly ? 0 : 1)  // max_discard_seg
        case 44..<48: (start, value) = (44, isReadOnly ? 0 : UInt64(Self.discardAlignment))  // discard_sector_alignment
        case 48..<52: (start, value) = (48, zeroing)  // max_write_zeroes_sectors
        case 52..<56: (start, value) = (52, isReadOnly ? 0 : 1)  // max_write_zeroes_seg
        case 56: (start, value) = (56, isReadOnly ? 0 : 1)  // write_zeroes_may_unmap
        default: return 0
        }
        return UInt8(truncatingIfNeeded: value >> (8 * UInt64(offset - start)))
    }

    /// Every field is read-only (no CONFIG_WCE), so writes are ignored.
    public mutating func writeConfiguration(offset: Int, bytes: UnsafeRawBufferPointer) {}

    public mutating func activate(
        features: VirtioFeatures, queues: [SplitQueue?], interrupt: any InterruptSignal
    ) throws(VirtioDeviceError) {
        guard queues.count == 1, let queue = queues[0] else { throw .activation("the request queue is not enabled") }
        guard queue.size <= queueSize else {
            throw .activation("queue size \(queue.size) is above the device maximum \(queueSize)")
        }
        negotiated = features
        self.queue = queue
        self.interrupt = interrupt
    }

    public mutating func notify(queue index: Int) {
        guard index == 0 else { return }
        guard let ring else { return serve() }
        serveQuietly(ring)
    }

    /// The ring's eventfd: reads and writes completed.
    public mutating func hostEvent(token: UInt32, events: HostEventKind) {
        guard token == BlockRingEngine.eventToken, let ring else { return }
        ring.clearEvent()
        if ring.hasCompletions { serveQuietly(ring) }
    }

    /// Serves the queue with the ring's completion events off, reaping by itself; once they are back on, serves
    /// again for any completion that slipped in between, so that none goes unannounced.
    private mutating func serveQuietly(_ ring: BlockRingEngine) {
        repeat {
            ring.signalsCompletions = false
            serve()
            ring.signalsCompletions = true
        } while queue != nil && ring.hasCompletions
    }

    /// Before a pause: waits for every ring transfer in flight (resubmitting short ones) and completes its request,
    /// then carries out a request held behind them, and tells the driver. Afterwards nothing is in flight, so the
    /// kernel writes no guest memory while the VM is paused. (I/O workers finish their batch within `notify`.)
    public mutating func quiesce() {
        guard let ring, var queue, let interrupt else { return }
        while ring.inFlight > 0 {
            guard ring.waitForCompletion() else {
                fail(interrupt, "io_uring: cannot wait for the transfers in flight")
                return
            }
            ring.clearEvent()
            reapRing(&queue)
        }
        if isHolding {
            swap(&chain, &heldChain)
            isHolding = false
            guard handleChain(&queue, interrupt) else { return }
        }
        if queue.needsNotification() { interrupt.signalUsedBuffers(queue: 0) }
        self.queue = queue
    }

    public mutating func reset() {
        batch?.discardAll()
        ring?.cancelAll()
        isHolding = false
        queue = nil
        interrupt = nil
        negotiated = []
    }

    /// Completes what the ring finished, then takes up to a queue's worth of new chains, submitting their reads
    /// and writes together; stops early while a held request waits or the ring is full, which its completions
    /// resume.
    private mutating func serve() {
        guard var queue, let interrupt else { return }
        var budget = Int(queue.size)
        queue.disableNotifications()
        var pending = false
        do {
            repeat {
                reapRing(&queue)
                if isHolding, let ring, ring.inFlight == 0 {
                    swap(&chain, &heldChain)
                    isHolding = false
                    guard handleChain(&queue, interrupt) else { return }
                }
                while budget > 0, !isHolding, ring?.hasRoom ?? true, try queue.nextChain(into: &chain) {
                    guard handleChain(&queue, interrupt) else { return }
                    budget -= 1
                }
                runBatch(&queue)
                if let ring {
                    ring.submit()
                    guard !ring.isBroken else {
                        fail(interrupt, "io_uring refused a submission")
                        return
                    }
                    reapRing(&queue)
                }
                if queue.needsNotification() { interrupt.signalUsedBuffers(queue: 0) }
                pending = queue.enableNotifications()
            } while budget > 0 && (pending && !isWaiting || isHolding && ring?.inFlight == 0)
        } catch {
            fail(interrupt, "\(error)")
            return
        }
        self.queue = queue
        // Stopped at the budget with buffers left: the driver published them already and will not notify again.
        // (A device waiting for the ring resumes on its completions instead.)
        if pending && !isWaiting { interrupt.requestService(queue: 0) }
    }

    /// Whether new chains wait for the ring: a held request, or no free slot.
    private var isWaiting: Bool { isHolding || ring.map { !$0.hasRoom } ?? false }

    /// Completes the requests whose ring transfers finished.
    private func reapRing(_ queue: inout SplitQueue) {
        guard let ring, ring.inFlight > 0 else { return }
        ring.reap(ok: Status.ok, ioError: Status.ioError) { head, usedLength in
            queue.addUsed(head: head, length: usedLength)
        }
        ring.submit()
    }

    /// Carries out (or queues, or holds) the request in `chain`. Returns false when the chain broke the ring rules
    /// and the device failed.
    private mutating func handleChain(_ queue: inout SplitQueue, _ interrupt: any InterruptSignal) -> Bool {
        var status: UInt8 = Status.ok
        var written: UInt32 = 0
        var disposition = Disposition.completed
        let pointer: UnsafeMutableRawPointer
        do throws(Failure) {
            pointer = try statusPointer()
            do throws(Failure) {
                disposition = try execute(written: &written, status: pointer, queue: &queue)
            } catch {
                guard case .status(let value) = error else { throw error }
                status = value
            }
        } catch {
            if case .ring(let reason) = error { fail(interrupt, "chain \(chain.head): \(reason)") }
            return false
        }
        switch disposition {
        case .completed:
            pointer.storeBytes(of: status, as: UInt8.self)
            queue.addUsed(head: chain.head, length: written + 1)
        case .batched:
            batch?.endRequest(head: chain.head, status: pointer, written: written)
        case .submitted:
            break
        case .held:
            swap(&chain, &heldChain)
            isHolding = true
        }
        return true
    }

    /// Carries out the queued reads and writes and completes their requests.
    private func runBatch(_ queue: inout SplitQueue) {
        guard let batch, !batch.isEmpty else { return }
        batch.run(completingOn: &queue, okStatus: Status.ok, errorStatus: Status.ioError)
    }

    /// Drops the queue and asks the driver for a reset.
    private mutating func fail(_ interrupt: any InterruptSignal, _ reason: String) {
        batch?.discardAll()
        ring?.cancelAll()
        isHolding = false
        queue = nil
        interrupt.signalNeedsReset(reason: "virtio-blk: \(reason)")
    }

    /// What became of a request that `execute` accepted.
    private enum Disposition {
        /// Done: its status goes back now.
        case completed
        /// Its reads or writes wait in `batch`, which completes it.
        case batched
        /// Its transfer is in the ring, whose completion completes it.
        case submitted
        /// It waits for the ring's transfers in flight, in `heldChain`.
        case held
    }

    /// The host address of the chain's status byte, the last device-writable byte.
    private func statusPointer() throws(Failure) -> UnsafeMutableRawPointer {
        guard chain.count > chain.readableCount, chain[chain.count - 1].length > 0 else {
            throw .ring("no device-writable status byte")
        }
        let last = chain[chain.count - 1]
        guard let pointer = try? memory.pointer(at: last.address + UInt64(last.length) - 1, length: 1) else {
            throw .ring("status byte outside guest RAM")
        }
        return pointer
    }

    /// Carries out the request in `chain`, adding the data bytes written into guest buffers to `written`, or
    /// queues it (its status byte at `status`). Returns normally for status OK, saying what became of the request.
    /// Requests other than reads and writes first finish the batch, and wait for the ring's transfers in flight.
    private func execute(
        written: inout UInt32, status: UnsafeMutableRawPointer, queue: inout SplitQueue
    ) throws(Failure) -> Disposition {
        guard chain.readableLength >= Self.headerLength else {
            throw .ring("request header is \(chain.readableLength) bytes, below 16")
        }
        let header = try gather16(at: 0)
        let type = UInt32(truncatingIfNeeded: header.0)
        let sector = header.1
        // Data the driver supplies after the header, and room it gives before the status byte.
        let dataOut = chain.readableLength - Self.headerLength
        let dataIn = chain.writableLength - 1
        let isTransfer = type == RequestType.read || type == RequestType.write
        if let batch {
            if isTransfer {
                if !batch.hasRoom(for: chain.count) { runBatch(&queue) }
            } else {
                runBatch(&queue)
            }
        }
        if let ring, !isTransfer, ring.inFlight > 0 { return .held }

        switch type {
        case RequestType.read:
            // The used length (data plus status byte) must fit its 32 bits.
            guard dataOut == 0, dataIn % Self.sectorSize == 0, dataIn < UInt32.max,
                inRange(sector, sectors: dataIn / Self.sectorSize)
            else { throw .status(Status.ioError) }
            let base = sector * Self.sectorSize
            if let batch {
                batch.beginRequest()
                do {
                    try forEachPiece(writable: true, skip: 0, count: dataIn) { (piece, at) throws(Failure) in
                        batch.add(BlockIOOperation(isWrite: false, buffer: piece.baseAddress!, length: piece.count, offset: base + at))
                        written += UInt32(piece.count)
                    }
                } catch {
                    batch.abandonRequest()
                    throw error
                }
                return .batched
            }
            if try submit(isWrite: false, offset: base, skip: 0, count: dataIn, status: status) { return .submitted }
            try forEachPiece(writable: true, skip: 0, count: dataIn) { (piece, at) throws(Failure) in
                do { try backend.read(at: base + at, into: piece) } catch { throw .status(Status.ioError) }
                written += UInt32(piece.count)
            }
        case RequestType.write:
            guard dataIn == 0, dataOut % Self.sectorSize == 0, inRange(sector, sectors: dataOut / Self.sectorSize),
                !isReadOnly
            else { throw .status(Status.ioError) }
            let base = sector * Self.sectorSize
            if let batch {
                batch.beginRequest()
                do {
                    try forEachPiece(writable: false, skip: Self.headerLength, count: dataOut) { (piece, at) throws(Failure) in
                        batch.add(BlockIOOperation(isWrite: true, buffer: piece.baseAddress!, length: piece.count, offset: base + at))
                    }
                } catch {
                    batch.abandonRequest()
                    throw error
                }
                return .batched
            }
            if try submit(isWrite: true, offset: base, skip: Self.headerLength, count: dataOut, status: status) { return .submitted }
            try forEachPiece(writable: false, skip: Self.headerLength, count: dataOut) { (piece, at) throws(Failure) in
                do { try backend.write(at: base + at, from: UnsafeRawBufferPointer(piece)) } catch {
                    throw .status(Status.ioError)
                }
            }
        case RequestType.flush:
            guard dataIn == 0, dataOut == 0 else { throw .status(Status.ioError) }
            do { try backend.flush() } catch { throw .status(Status.ioError) }
        case RequestType.getID:
            guard dataOut == 0, dataIn > 0 else { throw .status(Status.ioError) }
            try forEachPiece(writable: true, skip: 0, count: min(dataIn, UInt64(Self.serialLength))) {
                (piece, at) throws(Failure) in
                for index in piece.indices { piece[index] = serial[Int(at) + index] }
                written += UInt32(piece.count)
            }
        case RequestType.discard, RequestType.writeZeroes:
            let isDiscard = type == RequestType.discard
            guard negotiated.contains(isDiscard ? Feature.discard : Feature.writeZeroes) else {
                throw .status(Status.unsupported)
            }
            // One segment of {sector u64, num_sectors u32, flags u32}; flag bit 0 is UNMAP, the rest reserved.
            guard dataIn == 0, dataOut == Self.headerLength else { throw .status(Status.ioError) }
            let segment = try gather16(at: Self.headerLength)
            let start = segment.0
            let count = UInt32(truncatingIfNeeded: segment.1)
            let flags = UInt32(truncatingIfNeeded: segment.1 >> 32)
            guard flags & (isDiscard ? ~0 : ~1) == 0 else { throw .status(Status.unsupported) }
            guard count <= Self.maximumZeroingSectors, inRange(start, sectors: UInt64(count)) else {
                throw .status(Status.ioError)
            }
            let offset = start * Self.sectorSize
            let length = UInt64(count) * Self.sectorSize
            do {
                if isDiscard {
                    try backend.discard(at: offset, length: length)
                } else {
                    try backend.writeZeroes(at: offset, length: length)
                }
            } catch { throw .status(Status.ioError) }
        default:
            throw .status(Status.unsupported)
        }
        return .completed
    }

    /// Puts a read (or write) of `count` bytes at `offset` into the ring, its buffers the chain's writable (or
    /// readable) bytes from `skip`. Returns false when the device has no ring or the request cannot go through it.
    private func submit(
        isWrite: Bool, offset: UInt64, skip: UInt64, count: UInt64, status: UnsafeMutableRawPointer
    ) throws(Failure) -> Bool {
        guard let ring else { return false }
        ring.begin()
        do {
            try forEachPiece(writable: !isWrite, skip: skip, count: count) { (piece, _) throws(Failure) in ring.add(piece) }
        } catch {
            ring.abandon()
            throw error
        }
        return ring.commit(head: chain.head, isWrite: isWrite, offset: offset, status: status)
    }

    /// Whether `sectors` sectors from `sector` lie within the device (overflow-safe).
    private func inRange(_ sector: UInt64, sectors: UInt64) -> Bool {
        sector <= capacity && sectors <= capacity - sector
    }

    /// The 16 readable bytes at `offset` in the chain's readable stream, as two little-endian words.
    private func gather16(at offset: UInt64) throws(Failure) -> (UInt64, UInt64) {
        var words: (UInt64, UInt64) = (0, 0)
        try forEachPiece(writable: false, skip: offset, count: Self.headerLength) { (piece, at) throws(Failure) in
            for (index, byte) in piece.enumerated() {
                let position = Int(at) + index
                if position < 8 {
                    words.0 |= UInt64(byte) << (8 * position)
                } else {
                    words.1 |= UInt64(byte) << (8 * (position - 8))
                }
            }
        }
        return words
    }

    /// Calls `body` with the host memory of each piece of bytes `[skip, skip + count)` of the chain's readable
    /// (or writable) segments, in order, with the piece's offset from `skip`. The caller has checked that the
    /// segments hold that many bytes.
    private func forEachPiece(
        writable: Bool, skip: UInt64, count: UInt64,
        _ body: (UnsafeMutableRawBufferPointer, UInt64) throws(Failure) -> Void
    ) throws(Failure) {
        var toSkip = skip
        var done: UInt64 = 0
        for index in writable ? chain.readableCount..<chain.count : 0..<chain.readableCount {
            guard done < count else { return }
            let segment = chain[index]
            var length = UInt64(segment.length)
            if toSkip >= length {
                toSkip -= length
                continue
            }
            length = min(length - toSkip, count - done)
            guard let pointer = try? memory.pointer(at: segment.address + toSkip, length: length) else {
                throw .ring("buffer at 0x\(String(segment.address, radix: 16)) is outside guest RAM")
            }
            toSkip = 0
            try body(UnsafeMutableRawBufferPointer(start: pointer, count: Int(length)), done)
            done += length
        }
    }
}

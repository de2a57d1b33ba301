import Glibc
import GuestMemory
import Qcow2
import Synchronization
import TestSupport
import Testing
import Virtio
import VMM
@testable import VirtioDevices

/// A ring whose transfers complete only when the test says, by as many bytes as it says, against `disk`.
final class ScriptedRing: BlockIORing, @unchecked Sendable {
    struct Entry {
        var tag: UInt64
        var isWrite: Bool
        var vectors: [iovec]
        var offset: UInt64
    }

    /// A pipe stands in for the eventfd: a byte written per completion.
    private let pipeEnds: [Int32] = {
        var ends: [Int32] = [-1, -1]
        _ = pipe(&ends)
        _ = fcntl(ends[0], F_SETFL, O_NONBLOCK)
        return ends
    }()
    var eventDescriptor: Int32 { pipeEnds[0] }
    var disk = [UInt8](repeating: 0, count: 1 << 20)
    private var queued: [Entry] = []
    /// Submitted transfers, oldest first.
    private(set) var inFlight: [Entry] = []
    private var ready: [(UInt64, Int32)] = []
    /// How many `submit()` calls handed entries over.
    private(set) var submissions = 0
    private(set) var cancellations = 0

    deinit { pipeEnds.forEach { close($0) } }

    var unsubmitted: Int { queued.count }

    var hasCompletions: Bool { !ready.isEmpty }
    var signalsCompletions = true

    func prepare(
        write: Bool, descriptor: Int32, vectors: UnsafePointer<iovec>, count: Int, offset: UInt64, tag: UInt64,
        inWorker: Bool
    ) -> Bool {
        queued.append(Entry(tag: tag, isWrite: write, vectors: Array(UnsafeBufferPointer(start: vectors, count: count)), offset: offset))
        return true
    }

    func submit() throws(DiskError) {
        guard !queued.isEmpty else { return }
        inFlight += queued
        queued.removeAll()
        submissions += 1
    }

    func reap(_ body: (UInt64, Int32) -> Void) {
        let completions = ready
        ready.removeAll()
        for (tag, result) in completions { body(tag, result) }
    }

    func cancelSubmitted() throws(DiskError) {
        cancellations += 1
        for entry in inFlight { ready.append((entry.tag, -ECANCELED)) }
        inFlight.removeAll()
    }

    /// Runs when the device blocks for a completion (the test completes a transfer there); nothing by default.
    var onWait: (() -> Void)?

    func waitForCompletion() throws(DiskError) { onWait?() }

    func clearEvent() {
        var bytes = [UInt8](repeating: 0, count: 64)
        while read(eventDescriptor, &bytes, bytes.count) > 0 {}
    }

    /// The transfer in flight at `offset`.
    func entry(at offset: UInt64) throws -> Entry {
        try #require(inFlight.first { $0.offset == offset }, "no transfer in flight at \(offset)")
    }

    /// Completes the transfer at `offset` after moving `bytes` of it (all by default) between its buffers and
    /// `disk`, or with the negative errno `error`; signals the eventfd.
    func complete(at offset: UInt64, bytes: Int? = nil, error: Int32? = nil) throws {
        let entry = try entry(at: offset)
        inFlight.removeAll { $0.tag == entry.tag }
        let total = entry.vectors.reduce(0) { $0 + $1.iov_len }
        var left = min(bytes ?? total, total)
        let moved = left
        var position = Int(entry.offset)
        for vector in entry.vectors where left > 0 {
            let length = min(vector.iov_len, left)
            disk.withUnsafeMutableBytes { disk in
                if entry.isWrite {
                    (disk.baseAddress! + position).copyMemory(from: vector.iov_base!, byteCount: length)
                } else {
                    vector.iov_base!.copyMemory(from: disk.baseAddress! + position, byteCount: length)
                }
            }
            position += length
            left -= length
        }
        ready.append((entry.tag, error.map { -$0 } ?? Int32(moved)))
        var one: UInt8 = 1
        _ = write(pipeEnds[1], &one, 1)
    }
}

/// A virtio-blk device whose reads and writes go through a ring, driven as a driver would: request `i` on
/// descriptors 3i..3i+2 (or 2i, 2i+1 without data), many published before one notification.
struct RingHarness {
    static let queueSize: UInt16 = 16
    static let descriptorTable: UInt64 = 0x10_0000
    static let availableRing: UInt64 = 0x11_0000
    static let usedRing: UInt64 = 0x12_0000
    static let headerBase: UInt64 = 0x20_0000
    static let statusBase: UInt64 = 0x21_0000
    static let dataBase: UInt64 = 0x40_0000
    static let dataStride: UInt64 = 0x4_0000

    let memory: GuestMemory
    let interrupt = RecordingInterrupt()
    let watcher = RecordingWatcher()
    let ring: any BlockIORing
    let engine: BlockRingEngine
    var device: Block
    private var driver: DriverRing

    /// A device over `ring` with room for `slots` requests in flight, or over the kernel's io_uring on a raw
    /// file of `size` bytes opened with `cache` when `ring` is nil.
    init(ring scripted: ScriptedRing?, slots: UInt16 = queueSize, size: UInt64 = 1 << 20, cache: CacheMode = .writeback) throws {
        memory = try GuestMemory(size: 16 << 20)
        let path = "\(Scratch.directory)/tern-uring-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        let file = try PosixFile(path: path, writable: true, create: true, exclusive: true, cache: cache)
        unlink(path)
        try file.truncate(size)
        let backend = try RawBackend(file: file)
        if let scripted {
            ring = scripted
            engine = try BlockRingEngine(ring: scripted, file: nil, descriptor: -1, direct: false, queueSize: slots, watcher: watcher)
        } else {
            engine = try BlockRingEngine(backend: backend, queueSize: slots, watcher: watcher)
            ring = engine.ring
        }
        device = Block(memory: memory, backend: backend, readOnly: false, serial: "ring", queueSize: Self.queueSize, ring: engine)
        driver = DriverRing(
            memory: memory, size: Self.queueSize, descriptorTable: Self.descriptorTable,
            availableRing: Self.availableRing, usedRing: Self.usedRing, features: device.features)
        try device.activate(features: device.features, queues: [try driver.queue()], interrupt: interrupt)
    }

    /// Where request `slot`'s data buffers start.
    static func data(_ slot: Int) -> UInt64 { dataBase + dataStride * UInt64(slot) }

    /// Publishes request `slot` (header, data in `segments` buffers of the given lengths, status), unnotified.
    /// `dataAddress` overrides where the data lives.
    mutating func post(
        _ slot: Int, type: UInt32, sector: UInt64, segments: [Int] = [], out: [UInt8] = [], dataAddress: UInt64? = nil
    ) throws {
        let header = Self.headerBase + 16 * UInt64(slot)
        try memory.store(type, at: header)
        try memory.store(UInt32(0), at: header + 4)
        try memory.store(sector, at: header + 8)
        try memory.store(UInt8(0xFF), at: Self.statusBase + UInt64(slot))
        let isRead = type == Block.RequestType.read
        let address = dataAddress ?? Self.data(slot)
        if !out.isEmpty { try memory.write(out, at: address) }
        var chain = [ChainBuffer(address: header, length: 16, isWrite: false)]
        var at = address
        for length in segments {
            chain.append(ChainBuffer(address: at, length: UInt32(length), isWrite: isRead))
            at += UInt64(length)
        }
        chain.append(ChainBuffer(address: Self.statusBase + UInt64(slot), length: 1, isWrite: true))
        let head = UInt16(4 * slot)
        try driver.writeChain(chain, head: head)
        try driver.makeAvailable(head)
    }

    mutating func notify() { device.notify(queue: 0) }

    /// Delivers the ring's eventfd readiness to the device.
    mutating func event() { device.hostEvent(token: BlockRingEngine.eventToken, events: .readable) }

    /// The used-ring entries added since the last call: (request slot, used length).
    mutating func newlyUsed() throws -> [(slot: Int, length: UInt32)] {
        try driver.takeUsed().map { (Int($0.head) / 4, $0.length) }
    }

    func status(_ slot: Int) throws -> UInt8 { try memory.load(at: Self.statusBase + UInt64(slot)) }
}

/// Where scratch files go: the package's .build directory (O_DIRECT-capable, unlike a tmpfs /tmp).
enum Scratch {
    static let directory: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path + "/.build"
    }()
}

/// Whether this host lets a process create an io_uring.
let ioURingAvailable = (try? IOURing(entries: 4)) != nil

@Suite struct BlockURingTests {
    static let sector: UInt64 = 512

    /// Requests submitted in one pass stay in flight, untouched, until their transfers complete, and then complete
    /// in the order the transfers finish, not the order the driver made them available.
    @Test func requestsCompleteInCompletionOrder() throws {
        let ring = ScriptedRing()
        for index in ring.disk.indices { ring.disk[index] = UInt8(truncatingIfNeeded: index / 512 &+ index) }
        var harness = try RingHarness(ring: ring)
        try harness.post(0, type: Block.RequestType.read, sector: 8, segments: [4096])
        try harness.post(1, type: Block.RequestType.write, sector: 100, segments: [1024, 512], out: pattern(1536, seed: 5))
        try harness.post(2, type: Block.RequestType.read, sector: 24, segments: [512, 3584])
        harness.notify()
        #expect(ring.submissions == 1, "one submission for the whole pass")
        #expect(ring.inFlight.count == 3)
        #expect(harness.engine.inFlight == 3)
        #expect(try harness.newlyUsed().isEmpty)
        #expect(try (0..<3).map { try harness.status($0) } == [0xFF, 0xFF, 0xFF])

        try ring.complete(at: 24 * Self.sector)
        harness.event()
        #expect(try harness.newlyUsed().map(\.slot) == [2])
        #expect(harness.interrupt.usedBuffers == 1)
        // used_event: the driver wants an interrupt once the used index passes 1.
        try harness.memory.store(UInt16(1), at: RingHarness.availableRing + 4 + 2 * UInt64(RingHarness.queueSize))
        try ring.complete(at: 100 * Self.sector)
        try ring.complete(at: 8 * Self.sector)
        harness.event()
        let used = try harness.newlyUsed()
        #expect(used.map(\.slot) == [1, 0])
        #expect(used.map(\.length) == [1, 4097])
        #expect(try (0..<3).map { try harness.status($0) } == [0, 0, 0])
        #expect(try harness.memory.bytes(at: RingHarness.data(0), count: 4096) == Array(ring.disk[4096..<8192]))
        #expect(try harness.memory.bytes(at: RingHarness.data(2), count: 4096) == Array(ring.disk[12288..<16384]))
        #expect(Array(ring.disk[51200..<52736]) == pattern(1536, seed: 5))
        #expect(harness.interrupt.usedBuffers == 2)
        #expect(harness.engine.inFlight == 0)
        #expect(!harness.interrupt.needsReset)
    }

    /// A transfer that moves fewer bytes than asked is resubmitted for the rest, across buffer boundaries, and the
    /// request completes only when all of it has moved; a read that meets the end of the file reads zeros.
    @Test func shortTransfersAreResubmitted() throws {
        let ring = ScriptedRing()
        for index in ring.disk.indices { ring.disk[index] = UInt8(truncatingIfNeeded: index &* 7) }
        var harness = try RingHarness(ring: ring)
        try harness.post(0, type: Block.RequestType.read, sector: 0, segments: [4096, 4096])
        try harness.post(1, type: Block.RequestType.write, sector: 64, segments: [2048], out: pattern(2048, seed: 9))
        harness.notify()
        try ring.complete(at: 0, bytes: 1000)
        try ring.complete(at: 64 * Self.sector, bytes: 512)
        harness.event()
        #expect(try harness.newlyUsed().isEmpty)
        let rest = try ring.entry(at: 1000)
        #expect(rest.vectors.map(\.iov_len) == [3096, 4096])
        try ring.complete(at: 1000, bytes: 5000)
        try ring.complete(at: 64 * Self.sector + 512)
        harness.event()
        #expect(try harness.newlyUsed().map(\.slot) == [1])
        #expect(Array(ring.disk[32768..<34816]) == pattern(2048, seed: 9))
        // The file ends where the remaining 2192 bytes begin: they read as zeros.
        try ring.complete(at: 6000, bytes: 0)
        harness.event()
        let used = try harness.newlyUsed()
        #expect(used.map(\.slot) == [0] && used.map(\.length) == [8193])
        #expect(try harness.status(0) == Block.Status.ok)
        let data = try harness.memory.bytes(at: RingHarness.data(0), count: 8192)
        #expect(Array(data[0..<6000]) == Array(ring.disk[0..<6000]))
        #expect(data[6000...].allSatisfy { $0 == 0 })
    }

    /// A transfer that fails completes its request with IOERR; the others are unaffected.
    @Test func failedTransfersCompleteWithIOError() throws {
        let ring = ScriptedRing()
        var harness = try RingHarness(ring: ring)
        try harness.post(0, type: Block.RequestType.read, sector: 0, segments: [4096])
        try harness.post(1, type: Block.RequestType.write, sector: 8, segments: [4096], out: pattern(4096, seed: 1))
        harness.notify()
        try ring.complete(at: 0, error: EIO)
        try ring.complete(at: 4096, bytes: 100)
        harness.event()
        try ring.complete(at: 4196, bytes: 0)
        harness.event()
        let used = try harness.newlyUsed()
        #expect(used.map(\.slot) == [0, 1])
        #expect(used.map(\.length) == [1, 1])
        #expect(try harness.status(0) == Block.Status.ioError)
        #expect(try harness.status(1) == Block.Status.ioError, "a write that stops moving fails")
        #expect(!harness.interrupt.needsReset)
    }

    /// A FLUSH waits for the writes before it, and the requests after it wait for the FLUSH.
    @Test func flushWaitsForTheWritesBeforeIt() throws {
        let ring = ScriptedRing()
        var harness = try RingHarness(ring: ring)
        try harness.post(0, type: Block.RequestType.write, sector: 0, segments: [4096], out: pattern(4096, seed: 2))
        try harness.post(1, type: Block.RequestType.write, sector: 8, segments: [4096], out: pattern(4096, seed: 3))
        try harness.post(2, type: Block.RequestType.flush, sector: 0)
        try harness.post(3, type: Block.RequestType.write, sector: 16, segments: [4096], out: pattern(4096, seed: 4))
        harness.notify()
        #expect(ring.inFlight.map(\.offset) == [0, 4096], "the write after the FLUSH is not started")
        try ring.complete(at: 4096)
        harness.event()
        #expect(try harness.newlyUsed().map(\.slot) == [1])
        #expect(try harness.status(2) == 0xFF, "the FLUSH still waits for the first write")
        #expect(ring.inFlight.map(\.offset) == [0])
        try ring.complete(at: 0)
        harness.event()
        #expect(try harness.newlyUsed().map(\.slot) == [0, 2])
        #expect(try harness.status(2) == Block.Status.ok)
        #expect(ring.inFlight.map(\.offset) == [8192], "the write after the FLUSH starts once the FLUSH is done")
        try ring.complete(at: 8192)
        harness.event()
        #expect(try harness.newlyUsed().map(\.slot) == [3])
    }

    /// Before a pause the device waits for every transfer in flight, resubmitting short ones, completes their
    /// requests and the FLUSH held behind them, and tells the driver: nothing is left for the kernel to write into
    /// guest memory while the VM is paused.
    @Test func quiesceCompletesEveryTransferInFlight() throws {
        let ring = ScriptedRing()
        var harness = try RingHarness(ring: ring)
        try harness.post(0, type: Block.RequestType.write, sector: 0, segments: [4096], out: pattern(4096, seed: 6))
        try harness.post(1, type: Block.RequestType.read, sector: 8, segments: [4096])
        try harness.post(2, type: Block.RequestType.flush, sector: 0)
        harness.notify()
        #expect(ring.inFlight.count == 2)
        var waits = 0
        ring.onWait = { [unowned ring] in
            waits += 1
            guard let entry = ring.inFlight.first else { return }
            // The first wait moves only part of the write: the rest must be resubmitted and waited for too.
            try? ring.complete(at: entry.offset, bytes: waits == 1 ? 1000 : nil)
        }
        harness.device.quiesce()
        #expect(ring.inFlight.isEmpty)
        #expect(harness.engine.inFlight == 0)
        #expect(try harness.newlyUsed().map(\.slot) == [1, 0, 2])
        #expect(try (0..<3).map { try harness.status($0) } == [0, 0, 0])
        #expect(Array(ring.disk[0..<4096]) == pattern(4096, seed: 6))
        #expect(harness.interrupt.usedBuffers == 1)
        #expect(!harness.interrupt.needsReset)
        // Quiescent already: a second call waits for nothing.
        waits = 0
        harness.device.quiesce()
        #expect(waits == 0)
    }

    /// With every slot busy the device leaves further chains in the queue, and takes them when a slot frees.
    @Test func aFullRingWaitsForASlot() throws {
        let ring = ScriptedRing()
        var harness = try RingHarness(ring: ring, slots: 2)
        for slot in 0..<3 { try harness.post(slot, type: Block.RequestType.read, sector: UInt64(8 * slot), segments: [4096]) }
        harness.notify()
        #expect(ring.inFlight.map(\.offset) == [0, 4096])
        #expect(harness.interrupt.serviceRequests.isEmpty, "completions resume the device")
        try ring.complete(at: 4096)
        harness.event()
        #expect(try harness.newlyUsed().map(\.slot) == [1])
        #expect(ring.inFlight.map(\.offset) == [0, 8192])
        try ring.complete(at: 0)
        try ring.complete(at: 8192)
        harness.event()
        #expect(try harness.newlyUsed().map(\.slot) == [0, 2])
    }

    /// A chain whose buffer lies outside guest RAM breaks the device (DEVICE_NEEDS_RESET): transfers in flight are
    /// cancelled and never complete into guest memory; after a reset the device works again.
    @Test func aHostileChainBreaksOnlyTheDevice() throws {
        let ring = ScriptedRing()
        var harness = try RingHarness(ring: ring)
        try harness.post(0, type: Block.RequestType.read, sector: 0, segments: [4096])
        harness.notify()
        #expect(ring.inFlight.count == 1)
        try harness.post(1, type: Block.RequestType.read, sector: 8, segments: [4096], dataAddress: 1 << 40)
        harness.notify()
        #expect(harness.interrupt.needsReset)
        #expect(ring.cancellations == 1 && ring.inFlight.isEmpty)
        #expect(harness.engine.inFlight == 0)
        #expect(try harness.newlyUsed().isEmpty)
        #expect(try harness.status(0) == 0xFF, "the cancelled read never completed")

        // The driver resets the device, mends the chain and starts over with the same two requests.
        harness.device.reset()
        try harness.memory.store(RingHarness.data(1), at: RingHarness.descriptorTable + 16 * 5)
        let queue = try SplitQueue(
            memory: harness.memory, size: RingHarness.queueSize, descriptorTable: RingHarness.descriptorTable,
            availableRing: RingHarness.availableRing, usedRing: RingHarness.usedRing, features: harness.device.features)
        try harness.device.activate(features: harness.device.features, queues: [queue], interrupt: harness.interrupt)
        harness.notify()
        #expect(ring.inFlight.map(\.offset) == [0, 4096])
        try ring.complete(at: 0)
        try ring.complete(at: 4096)
        harness.event()
        #expect(try harness.newlyUsed().map(\.slot) == [0, 1])
        #expect(try harness.status(0) == Block.Status.ok && harness.status(1) == Block.Status.ok)
    }

    /// A chain without a status byte breaks the device with nothing left in flight.
    @Test func aChainWithoutStatusByteBreaksTheDevice() throws {
        let ring = ScriptedRing()
        var harness = try RingHarness(ring: ring)
        try harness.post(0, type: Block.RequestType.read, sector: 0, segments: [4096])
        // Make the last descriptor device-readable: no status byte.
        try harness.memory.store(UInt16(0), at: RingHarness.descriptorTable + 16 * 2 + 12)
        harness.notify()
        #expect(harness.interrupt.needsReset)
        #expect(ring.inFlight.isEmpty && harness.engine.inFlight == 0)
    }

    /// Reads and writes out of range, or writes carrying data the wrong way, never reach the ring.
    @Test func invalidRequestsNeverReachTheRing() throws {
        let ring = ScriptedRing()
        var harness = try RingHarness(ring: ring)
        let sectors = harness.device.capacity
        try harness.post(0, type: Block.RequestType.read, sector: sectors - 1, segments: [1024])
        try harness.post(1, type: Block.RequestType.read, sector: UInt64.max / 512, segments: [512])
        try harness.post(2, type: Block.RequestType.read, sector: 0, segments: [100])
        harness.notify()
        #expect(ring.submissions == 0)
        #expect(try harness.newlyUsed().map(\.slot) == [0, 1, 2])
        #expect(try (0..<3).map { try harness.status($0) } == [1, 1, 1])
    }

    /// The kernel's io_uring carries reads and writes of a raw file, in the page cache and with O_DIRECT (where an
    /// unaligned request goes through the backend instead).
    @Test(.enabled(if: ioURingAvailable), arguments: CacheMode.allCases)
    func kernelRingKeepsTheData(cache: CacheMode) throws {
        var harness = try RingHarness(ring: nil, cache: cache)
        #expect(harness.watcher.descriptors.count == 1)
        for slot in 0..<4 {
            try harness.post(slot, type: Block.RequestType.write, sector: UInt64(16 * slot), segments: [4096, 4096],
                             out: pattern(8192, seed: UInt8(slot)))
        }
        try Self.pump(&harness, until: 4)
        #expect(try (0..<4).map { try harness.status($0) } == [0, 0, 0, 0])
        for slot in 0..<4 { try harness.post(slot, type: Block.RequestType.read, sector: UInt64(16 * slot), segments: [8192]) }
        try Self.pump(&harness, until: 4)
        for slot in 0..<4 {
            #expect(try harness.memory.bytes(at: RingHarness.data(slot), count: 8192) == pattern(8192, seed: UInt8(slot)))
        }
        #expect(try (0..<4).map { try harness.status($0) } == [0, 0, 0, 0])
        // Unaligned for O_DIRECT: 512 bytes at sector 1, into the middle of a page.
        try harness.post(0, type: Block.RequestType.read, sector: 1, segments: [512], dataAddress: RingHarness.data(3) + 512)
        try Self.pump(&harness, until: 1)
        #expect(try harness.memory.bytes(at: RingHarness.data(3) + 512, count: 512) == Array(pattern(8192, seed: 0)[512..<1024]))
        #expect(try harness.status(0) == Block.Status.ok)
        #expect(!harness.interrupt.needsReset)
    }

    /// Notifies, then delivers the eventfd's readiness until `count` requests completed (at most 10 s).
    static func pump(_ harness: inout RingHarness, until count: Int) throws {
        harness.notify()
        var done = try harness.newlyUsed().count
        var waits = 0
        while done < count {
            var descriptor = pollfd(fd: harness.ring.eventDescriptor, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, 100)
            harness.event()
            done += try harness.newlyUsed().count
            waits += 1
            try #require(waits < 100, "\(count - done) requests never completed")
        }
    }

    /// The kernel's ring itself: a read of a pipe stays in flight until data arrives, its completion signals the
    /// eventfd only while completions signal it, and a cancellation ends a read that would wait forever.
    @Test(.enabled(if: ioURingAvailable)) func kernelRingSignalsAndCancels() throws {
        let ring = try IOURing(entries: 4)
        var ends: [Int32] = [-1, -1]
        try #require(pipe(&ends) == 0)
        defer { ends.forEach { close($0) } }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)
        defer { buffer.deallocate() }
        var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        func readable() -> Bool {
            var descriptor = pollfd(fd: ring.eventDescriptor, events: Int16(POLLIN), revents: 0)
            return poll(&descriptor, 1, 0) == 1
        }
        func completions() -> [(UInt64, Int32)] {
            var reaped: [(UInt64, Int32)] = []
            ring.reap { reaped.append(($0, $1)) }
            return reaped
        }
        // Offset -1: the pipe's own position, as non-seekable files want.
        #expect(ring.prepare(write: false, descriptor: ends[0], vectors: &vector, count: 1, offset: .max, tag: 7, inWorker: false))
        #expect(ring.unsubmitted == 1)
        try ring.submit()
        #expect(ring.unsubmitted == 0 && !ring.hasCompletions && !readable())
        ring.signalsCompletions = false
        #expect(write(ends[1], "hello", 5) == 5)
        try ring.waitForCompletion()
        #expect(!readable(), "no event while completions do not signal")
        #expect(completions().map { $0.0 } == [7])
        ring.signalsCompletions = true
        #expect(ring.prepare(write: false, descriptor: ends[0], vectors: &vector, count: 1, offset: .max, tag: 8, inWorker: true))
        try ring.submit()
        try ring.cancelSubmitted()
        try ring.waitForCompletion()
        var reaped = completions()
        if reaped.count < 2 {
            try ring.waitForCompletion()
            reaped += completions()
        }
        #expect(reaped.contains { $0 == (8, -ECANCELED) })
        #expect(reaped.contains { $0.0 == IOURing.cancelTag })
        #expect(readable())
        ring.clearEvent()
        #expect(!readable())
    }

    @Test func diskSettingNamesTheEngineAsQEMUDoes() throws {
        #expect(try DiskSetting(parsing: "path=x").aio == .ioUring)
        #expect(try DiskSetting(parsing: "path=x,aio=threads") == DiskSetting(path: "x", aio: .threads))
        #expect(try DiskSetting(parsing: "path=x,aio=sync").description == "path=x,aio=sync")
        #expect(try DiskSetting(parsing: "path=x,aio=io_uring").description == "path=x")
        #expect(throws: ConfigError.self) { try DiskSetting(parsing: "path=x,aio=native") }
    }
}

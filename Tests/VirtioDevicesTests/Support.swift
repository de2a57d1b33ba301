import Glibc
import GuestMemory
import Qcow2
import TestSupport
import Virtio
import VirtioDevices

/// Which backend a test drives the device over.
enum BackendKind: CaseIterable, CustomStringConvertible, Sendable {
    case raw, qcow2

    var description: String { self == .raw ? "raw" : "qcow2" }

    /// A fresh, zeroed writable disk of `size` bytes in an already unlinked temporary file.
    func make(size: UInt64) throws -> any BlockBackend {
        var template = Array("/tmp/tern-blk-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw DiskError.io("mkstemp", errno: errno) }
        close(fd)
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        defer { unlink(path) }
        let file = try PosixFile(path: path, writable: true)
        switch self {
        case .raw:
            try file.truncate(size)
            return try RawBackend(file: file)
        case .qcow2:
            var options = Qcow2CreateOptions(size: size)
            options.clusterSize = 4096
            try Qcow2Image.create(file: file, options: options)
            return try Qcow2Image(file: file, path: nil, options: Qcow2OpenOptions(writable: true))
        }
    }
}

/// A virtio-blk device activated over a 16-entry split queue in 16 MiB of guest RAM, driven the way a
/// driver would: one request at a time, then a notification.
struct Harness {
    static let queueSize: UInt16 = 16
    static let descriptorTable: UInt64 = 0x10_0000
    static let availableRing: UInt64 = 0x11_0000
    static let usedRing: UInt64 = 0x12_0000
    static let indirectTable: UInt64 = 0x13_0000
    static let headerAddress: UInt64 = 0x20_0000
    static let statusAddress: UInt64 = 0x20_1000
    static let outAddress: UInt64 = 0x30_0000
    static let inAddress: UInt64 = 0x50_0000

    let memory: GuestMemory
    let interrupt = RecordingInterrupt()
    var device: Block
    var ring: DriverRing

    /// A device over a fresh disk of `kind`; `acknowledged` defaults to every offered feature.
    init(
        _ kind: BackendKind, size: UInt64 = 1 << 20, readOnly: Bool = false, acknowledged: VirtioFeatures? = nil,
        ioWorkers: Int = 0
    ) throws {
        try self.init(backend: try kind.make(size: size), readOnly: readOnly, acknowledged: acknowledged, ioWorkers: ioWorkers)
    }

    /// A device over `backend`; `acknowledged` defaults to every offered feature.
    init(backend: any BlockBackend, readOnly: Bool = false, acknowledged: VirtioFeatures? = nil, ioWorkers: Int = 0) throws {
        memory = try GuestMemory(size: 16 << 20)
        device = Block(
            memory: memory, backend: backend, readOnly: readOnly, serial: "tern-disk-0", queueSize: Self.queueSize,
            ioWorkers: ioWorkers)
        let features = acknowledged ?? device.features
        ring = DriverRing(
            memory: memory, size: Self.queueSize, descriptorTable: Self.descriptorTable,
            availableRing: Self.availableRing, usedRing: Self.usedRing, features: features)
        try device.activate(features: features, queues: [try ring.queue()], interrupt: interrupt)
    }

    /// Places `buffers` as one chain (direct descriptors from 0, or one indirect table), publishes it and
    /// notifies; returns the used length, or nil when the device used nothing.
    mutating func submit(_ buffers: [ChainBuffer], indirect: Bool = false) throws -> UInt32? {
        try ring.writeChain(buffers, head: 0, indirectTable: indirect ? Self.indirectTable : nil)
        let usedBefore = try ring.usedIndex()
        // used_event: the driver wants an interrupt for this request.
        try ring.setUsedEvent(usedBefore)
        try ring.makeAvailable(0)
        device.notify(queue: 0)
        guard try ring.usedIndex() != usedBefore else { return nil }
        return try ring.usedElement(Int(usedBefore)).length
    }

    /// Sends a request of `type` at `sector` carrying `out` and asking for `inLength` bytes, with data split into
    /// segments of at most `split` bytes; returns the status byte, the used length and the bytes read.
    mutating func request(
        _ type: UInt32, sector: UInt64 = 0, out: [UInt8] = [], inLength: Int = 0,
        split: Int = Int.max, indirect: Bool = false
    ) throws -> (status: UInt8, used: UInt32?, data: [UInt8]) {
        try memory.store(type, at: Self.headerAddress)
        try memory.store(UInt32(0), at: Self.headerAddress + 4)
        try memory.store(sector, at: Self.headerAddress + 8)
        try memory.store(UInt8(0xFF), at: Self.statusAddress)
        try memory.write(out, at: Self.outAddress)
        try memory.write([UInt8](repeating: 0xEE, count: inLength), at: Self.inAddress)
        var buffers = [ChainBuffer(address: Self.headerAddress, length: 16, isWrite: false)]
        buffers += pieces(Self.outAddress, out.count, split, isWrite: false)
        buffers += pieces(Self.inAddress, inLength, split, isWrite: true)
        buffers.append(ChainBuffer(address: Self.statusAddress, length: 1, isWrite: true))
        let used = try submit(buffers, indirect: indirect)
        return (try memory.load(at: Self.statusAddress), used, try memory.bytes(at: Self.inAddress, count: inLength))
    }

    private func pieces(_ address: UInt64, _ count: Int, _ split: Int, isWrite: Bool) -> [ChainBuffer] {
        stride(from: 0, to: count, by: split).map { start in
            ChainBuffer(address: address + UInt64(start), length: UInt32(min(split, count - start)), isWrite: isWrite)
        }
    }
}

/// A 1 MiB disk whose every operation fails.
struct FailingBackend: BlockBackend {
    var virtualSize: UInt64 { 1 << 20 }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(DiskError) { throw .io("read", errno: EIO) }
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(DiskError) { throw .io("write", errno: EIO) }
    func flush() throws(DiskError) { throw .io("flush", errno: EIO) }
    func discard(at offset: UInt64, length: UInt64) throws(DiskError) { throw .io("discard", errno: EIO) }
    func writeZeroes(at offset: UInt64, length: UInt64) throws(DiskError) { throw .io("write zeroes", errno: EIO) }
}

/// The 16-byte DISCARD / WRITE_ZEROES segment.
func zeroingSegment(sector: UInt64, count: UInt32, flags: UInt32 = 0) -> [UInt8] {
    var bytes: [UInt8] = []
    for index in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: sector >> (8 * index))) }
    for index in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: count >> (8 * index))) }
    for index in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: flags >> (8 * index))) }
    return bytes
}

extension VirtioFeatures {
    /// The set of the given bit numbers.
    init(bits: [Int]) {
        self = bits.reduce(into: []) { $0.insert(VirtioFeatures(bit: $1)) }
    }
}

/// `count` bytes of a pattern that differs with `seed`.
func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ $0 >> 9) }
}

import GuestMemory
import Synchronization
import TestSupport
import Virtio
import VirtioDevices

/// A backend in memory: records what the device sends and hands it queued frames.
final class FakeNetBackend: NetBackend {
    struct State {
        var sent: [[UInt8]] = []
        var incoming: [[UInt8]] = []
        var blocked = false
        var receiveOffloads: NetOffloads?
        var reads = 0
    }

    let offloads: NetOffloads
    let descriptor: Int32 = 42
    let state = Mutex(State())

    init(offloads: NetOffloads = []) { self.offloads = offloads }

    func send(_ frame: UnsafeRawBufferPointer) throws(NetBackendError) {
        let blocked = state.withLock { state in
            if !state.blocked { state.sent.append(Array(frame)) }
            return state.blocked
        }
        if blocked { throw .wouldBlock }
    }

    func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        let frame: [UInt8]? = state.withLock { state in
            state.reads += 1
            return state.incoming.isEmpty ? nil : state.incoming.removeFirst()
        }
        guard let frame else { return nil }
        let count = min(frame.count, buffer.count)
        buffer.copyBytes(from: frame[0..<count])
        return count
    }

    func setReceiveOffloads(_ offloads: NetOffloads) { state.withLock { $0.receiveOffloads = offloads } }

    func queue(_ frame: [UInt8]) { state.withLock { $0.incoming.append(frame) } }
    var sent: [[UInt8]] { state.withLock { $0.sent } }
    var waiting: Int { state.withLock { $0.incoming.count } }
}

/// A virtio-net device over a fake backend, activated over two 16-entry split queues in 16 MiB of guest RAM,
/// driven the way a driver would.
struct NetHarness {
    static let queueSize: UInt16 = 16
    /// Descriptor table, available ring and used ring of the receive and transmit queues.
    static let rings: [(table: UInt64, available: UInt64, used: UInt64)] = [
        (0x10_0000, 0x11_0000, 0x12_0000), (0x14_0000, 0x15_0000, 0x16_0000),
    ]
    static let indirectTable: UInt64 = 0x18_0000
    static let mac = MACAddress.locallyAdministered(suffix: 0x12_3456)

    let memory: GuestMemory
    let backend: FakeNetBackend
    let watcher = RecordingWatcher()
    let interrupt = RecordingInterrupt()
    var device: Net
    private var driverRings: [DriverRing] = []

    /// A device over a backend with `offloads`, activated with every offered feature but `declined` unless
    /// `activate` is false.
    init(
        offloads: NetOffloads = [], declined: VirtioFeatures = [], mtu: UInt16? = nil, activate: Bool = true
    ) throws {
        memory = try GuestMemory(size: 16 << 20)
        backend = FakeNetBackend(offloads: offloads)
        device = try Net(
            memory: memory, backend: backend, watcher: watcher, mac: Self.mac, mtu: mtu, queueSize: Self.queueSize)
        if activate { try self.activate(acknowledged: device.features.subtracting(declined)) }
    }

    /// Activates the device with `acknowledged` (default: every offered feature).
    mutating func activate(acknowledged: VirtioFeatures? = nil) throws {
        let features = acknowledged ?? device.features
        let memory = memory
        driverRings = Self.rings.map { rings in
            DriverRing(
                memory: memory, size: Self.queueSize, descriptorTable: rings.table,
                availableRing: rings.available, usedRing: rings.used, features: features)
        }
        try device.activate(features: features, queues: try driverRings.map { try $0.queue() }, interrupt: interrupt)
    }

    /// Makes `buffers` available on `queue` as one chain (direct, or through one indirect table).
    mutating func publish(_ queue: Int, _ buffers: [ChainBuffer], indirect: Bool = false) throws {
        try driverRings[queue].publish(buffers, indirectTable: indirect ? Self.indirectTable : nil)
    }

    /// Places `bytes` in guest memory at `address` and publishes them as one transmit chain split into pieces
    /// of at most `split` bytes, then notifies the transmit queue.
    mutating func transmit(_ bytes: [UInt8], at address: UInt64 = 0x20_0000, split: Int = Int.max) throws {
        try memory.write(bytes, at: address)
        let buffers = stride(from: 0, to: bytes.count, by: split).map { start in
            ChainBuffer(address: address + UInt64(start), length: UInt32(min(split, bytes.count - start)), isWrite: false)
        }
        try publish(Net.transmitQueue, buffers)
        device.notify(queue: Net.transmitQueue)
    }

    /// used.idx of `queue`.
    func usedIndex(_ queue: Int) throws -> UInt16 { try driverRings[queue].usedIndex() }

    /// Used element `index` of `queue`: the head and the written length.
    func usedElement(_ queue: Int, _ index: UInt16) throws -> (head: UInt32, length: UInt32) {
        let element = try driverRings[queue].usedElement(Int(index))
        return (element.id, element.length)
    }

    /// Tells the device its backend has frames waiting.
    mutating func backendReadable() {
        device.hostEvent(token: Net.backendToken, events: [.readable, .writable])
    }
}

/// A virtio-net header: flags, gso_type, then zeros with num_buffers.
func netHeader(flags: UInt8 = 0, gso: UInt8 = 0, buffers: UInt16 = 0) -> [UInt8] {
    [flags, gso, 0, 0, 0, 0, 0, 0, 0, 0, UInt8(truncatingIfNeeded: buffers), UInt8(truncatingIfNeeded: buffers >> 8)]
}

/// An Ethernet frame of `count` bytes: broadcast destination, then a pattern that differs with `seed`.
func ethernetFrame(_ count: Int, seed: UInt8) -> [UInt8] {
    [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] + pattern(count - 6, seed: seed)
}

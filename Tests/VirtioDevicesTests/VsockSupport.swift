import Glibc
import GuestMemory
import Synchronization
import TestSupport
import Virtio
import VirtioDevices

/// A packet the device put in a receive buffer.
struct VsockReceivedPacket {
    var header: VsockHeader
    var payload: [UInt8]

    var operation: UInt16 { header.operation }
    var text: String { String(decoding: payload, as: UTF8.self) }
}

/// A temporary directory, removed with its contents when the value is dropped.
final class VsockTemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/tern-vsock-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit {
        if let directory = opendir(path) {
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if name != "." && name != ".." { unlink(path + "/" + name) }
            }
            closedir(directory)
        }
        rmdir(path)
    }
}

/// A vsock device over a real Unix socket backend in a temporary directory, driven the way a guest driver would:
/// receive buffers posted up front and reposted once read, one packet per transmit chain.
struct VsockHarness {
    static let queueSize: UInt16 = 16
    static let guestCID: UInt32 = 3
    /// Receive buffers posted by default.
    static let receiveBuffers = 8
    static let receiveBufferSize = 4096 + VsockHeader.size

    let memory: GuestMemory
    let interrupt = RecordingInterrupt()
    let watcher = RecordingWatcher()
    let directory = VsockTemporaryDirectory()
    let socketPath: String
    var device: Vsock
    private var nextDescriptor: [UInt16] = [0, 0, 0]
    private var driverRings: [DriverRing] = []
    /// Receive buffer lengths by descriptor (the buffer of descriptor d is at `receiveAddress(d)`).
    private var receiveLengths: [UInt16: Int] = [:]
    /// Guest side: the guest's receive window and how much it consumed, per guest port.
    var guestBuffer: UInt32 = 65536

    init(maximumConnections: Int = 16, bufferSize: UInt32 = 64 * 1024, activate: Bool = true) throws {
        memory = try GuestMemory(size: 16 << 20)
        socketPath = directory.path + "/v.sock"
        let backend = try UnixSocketVsockBackend(path: socketPath)
        device = Vsock(
            memory: memory, guestCID: Self.guestCID, backend: backend, watcher: watcher, queueSize: Self.queueSize,
            maximumConnections: maximumConnections, bufferSize: bufferSize)
        if activate { try self.activate() }
    }

    static func rings(_ queue: Int) -> (table: UInt64, available: UInt64, used: UInt64) {
        let base = 0x10_0000 + UInt64(queue) * 0x1_0000
        return (base, base + 0x1000, base + 0x2000)
    }

    static func receiveAddress(_ descriptor: UInt16) -> UInt64 { 0x40_0000 + UInt64(descriptor) * 0x2000 }
    static func transmitAddress(_ descriptor: UInt16) -> UInt64 { 0x80_0000 + UInt64(descriptor) * 0x1_0000 }
    static let eventAddress: UInt64 = 0xC0_0000

    /// Activates the device over fresh rings (as after a reset).
    mutating func activate() throws {
        nextDescriptor = [0, 0, 0]
        receiveLengths = [:]
        let features = device.features
        driverRings = (0..<3).map { queue in
            let rings = Self.rings(queue)
            return DriverRing(
                memory: memory, size: Self.queueSize, descriptorTable: rings.table, availableRing: rings.available,
                usedRing: rings.used, features: features)
        }
        for queue in 0..<3 { try driverRings[queue].reset() }
        try device.activate(features: features, queues: try driverRings.map { try $0.queue() }, interrupt: interrupt)
    }

    /// Makes `buffers` available on `queue` as one chain of consecutive descriptors starting at `head`.
    mutating func publish(_ queue: Int, _ buffers: [ChainBuffer], head: UInt16) throws {
        try driverRings[queue].writeChain(buffers, head: head)
        try driverRings[queue].makeAvailable(head)
    }

    /// New used elements of `queue` since the last call.
    mutating func used(_ queue: Int) throws -> [(head: UInt16, length: UInt32)] { try driverRings[queue].takeUsed() }

    /// Posts `count` receive buffers of `size` bytes (one descriptor each) and notifies the device.
    mutating func postReceiveBuffers(_ count: Int = receiveBuffers, size: Int = receiveBufferSize) throws {
        for _ in 0..<count {
            let descriptor = nextDescriptor[0]
            nextDescriptor[0] = (descriptor + 1) & (Self.queueSize - 1)
            receiveLengths[descriptor] = size
            try publish(0, [ChainBuffer(address: Self.receiveAddress(descriptor), length: UInt32(size), isWrite: true)], head: descriptor)
        }
        device.notify(queue: 0)
    }

    /// The packets the device delivered since the last call; each buffer is posted again unless `repost` is false.
    mutating func receive(repost: Bool = true) throws -> [VsockReceivedPacket] {
        var packets: [VsockReceivedPacket] = []
        var reposts: [(UInt16, Int)] = []
        for element in try used(0) {
            let address = Self.receiveAddress(element.head)
            let bytes = try memory.bytes(at: address, count: Int(element.length))
            let header = bytes.withUnsafeBytes { VsockHeader(decoding: $0) }
            packets.append(VsockReceivedPacket(header: header, payload: Array(bytes[VsockHeader.size...])))
            reposts.append((element.head, receiveLengths[element.head]!))
        }
        if repost {
            for (descriptor, size) in reposts {
                try publish(0, [ChainBuffer(address: Self.receiveAddress(descriptor), length: UInt32(size), isWrite: true)], head: descriptor)
            }
            if !reposts.isEmpty { device.notify(queue: 0) }
        }
        return packets
    }

    /// A header from the guest to the host with the guest's credit.
    func header(
        _ operation: UInt16, guestPort: UInt32, hostPort: UInt32, length: Int = 0, flags: UInt32 = 0,
        forwardCount: UInt32 = 0
    ) -> VsockHeader {
        VsockHeader(
            sourceCID: UInt64(Self.guestCID), destinationCID: Vsock.hostCID, sourcePort: guestPort,
            destinationPort: hostPort, length: UInt32(length), operation: operation, flags: flags,
            bufferAllocation: guestBuffer, forwardCount: forwardCount)
    }

    /// Sends one packet (header and payload in two descriptors, or laid out by `buffers`), notifies the device and
    /// returns whether the device used the chain.
    @discardableResult
    mutating func send(_ header: VsockHeader, payload: [UInt8] = [], buffers: [ChainBuffer]? = nil) throws -> Bool {
        let descriptor = nextDescriptor[1]
        let address = Self.transmitAddress(descriptor & 7)
        var bytes = [UInt8](repeating: 0, count: VsockHeader.size)
        bytes.withUnsafeMutableBytes { header.encode(into: $0) }
        try memory.write(bytes, at: address)
        try memory.write(payload, at: address + 0x100)
        var chain = [ChainBuffer(address: address, length: UInt32(VsockHeader.size), isWrite: false)]
        if !payload.isEmpty { chain.append(ChainBuffer(address: address + 0x100, length: UInt32(payload.count), isWrite: false)) }
        let layout = buffers ?? chain
        nextDescriptor[1] = (descriptor + UInt16(layout.count)) & (Self.queueSize - 1)
        try publish(1, layout, head: descriptor)
        device.notify(queue: 1)
        return !(try used(1)).isEmpty
    }

    /// Posts a 4-byte event buffer.
    mutating func postEventBuffer(length: UInt32 = 4, isWrite: Bool = true) throws {
        let descriptor = nextDescriptor[2]
        nextDescriptor[2] = (descriptor + 1) & (Self.queueSize - 1)
        try memory.store(UInt32(0xFFFF_FFFF), at: Self.eventAddress)
        try publish(2, [ChainBuffer(address: Self.eventAddress, length: length, isWrite: isWrite)], head: descriptor)
        device.notify(queue: 2)
    }

    /// Reports the readiness of every watched descriptor to the device, as the VMM's I/O thread would.
    mutating func pump() {
        for (descriptor, token) in watcher.descriptors.sorted(by: { $0.key < $1.key }) {
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN | POLLOUT), revents: 0)
            guard poll(&poller, 1, 0) == 1 else { continue }
            var events: HostEventKind = []
            if poller.revents & Int16(POLLIN) != 0 { events.insert(.readable) }
            if poller.revents & Int16(POLLOUT) != 0 { events.insert(.writable) }
            if poller.revents & Int16(POLLHUP | POLLERR) != 0 { events.insert(.hangup) }
            device.hostEvent(token: token, events: events)
        }
    }

    /// Pumps until the device delivers at least one packet or `attempts` rounds pass; returns what arrived.
    mutating func pumpUntilPackets(attempts: Int = 50) throws -> [VsockReceivedPacket] {
        for _ in 0..<attempts {
            pump()
            let packets = try receive()
            if !packets.isEmpty { return packets }
            usleep(2000)
        }
        return []
    }
}

/// Host-side socket helpers for tests (blocking, with timeouts).
enum VsockHostSocket {
    /// A listening Unix socket at `path`.
    static func listen(_ path: String) -> Int32 {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = unixAddress(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        precondition(bound == 0 && Glibc.listen(descriptor, 16) == 0, "cannot listen on \(path)")
        return descriptor
    }

    /// A connection to the Unix socket at `path`, or -1.
    static func connect(_ path: String) -> Int32 {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = unixAddress(path)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            close(descriptor)
            return -1
        }
        return descriptor
    }

    /// Accepts one connection within a second, or returns -1.
    static func accept(_ listener: Int32) -> Int32 {
        guard wait(listener, for: POLLIN) else { return -1 }
        return Glibc.accept(listener, nil, nil)
    }

    static func write(_ descriptor: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        write(descriptor, bytes)
    }

    static func write(_ descriptor: Int32, _ bytes: [UInt8]) {
        let written = bytes.withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        precondition(written == bytes.count, "short write to a test socket")
    }

    /// Reads whatever arrives within `milliseconds` (stops early at `count` bytes); nil at end of stream with
    /// nothing read.
    static func read(_ descriptor: Int32, count: Int = 65536, milliseconds: Int32 = 1000) -> [UInt8]? {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while result.count < count, wait(descriptor, for: POLLIN, milliseconds: result.isEmpty ? milliseconds : 50) {
            let got = recv(descriptor, &buffer, min(buffer.count, count - result.count), 0)
            if got <= 0 { return result.isEmpty ? nil : result }
            result += buffer[0..<got]
        }
        return result
    }

    /// Whether the peer closed: the socket reads end of stream (or a reset, when the peer left bytes unread)
    /// within a second.
    static func isClosed(_ descriptor: Int32) -> Bool {
        guard wait(descriptor, for: POLLIN) else { return false }
        var byte: UInt8 = 0
        let count = recv(descriptor, &byte, 1, Int32(MSG_DONTWAIT))
        return count == 0 || (count < 0 && errno == ECONNRESET)
    }

    static func wait(_ descriptor: Int32, for events: Int32, milliseconds: Int32 = 1000) -> Bool {
        var poller = pollfd(fd: descriptor, events: Int16(events), revents: 0)
        return poll(&poller, 1, milliseconds) == 1
    }

    private static func unixAddress(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        return address
    }
}

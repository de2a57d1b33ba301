import Glibc
import GuestMemory
import Virtio

/// A virtio-vsock device (VIRTIO 1.2 §5.10) for stream sockets between the guest and host programs, reached
/// through a `VsockBackend` (Firecracker's Unix socket scheme with `UnixSocketVsockBackend`).
///
/// Queues: 0 receiveq (packets to the guest), 1 transmitq (packets from the guest), 2 eventq. The configuration
/// space holds the guest's CID (le64). Each connection pairs a non-blocking host socket, watched edge-triggered
/// through the `HostEventWatcher`, with a guest socket; data moves straight between guest buffers and the host
/// socket, and credit flows both ways: the device never sends the guest more than the buffer it advertised, and
/// advertises `bufferSize` bytes per connection itself, holding at most that much that the host socket has not
/// taken yet.
///
/// The guest is untrusted. A chain that breaks the ring or packet layout (a short header, `len` beyond the chain,
/// buffers in the wrong direction) sets DEVICE_NEEDS_RESET and closes every connection; a well-formed packet that
/// breaks the protocol (wrong CIDs or type, an unknown op, data beyond its credit, data on a connection that is not
/// open) is answered with RST for that connection only. Connections are bounded by `maximumConnections`; more
/// guest requests are refused with RST, more host connections are closed.
///
/// After a device reset every connection is closed; when the driver activates the device again the event queue
/// carries TRANSPORT_RESET, so the guest drops whatever it still believes is connected.
public struct Vsock: VirtioDevice {
    /// VIRTIO_VSOCK_F_STREAM: stream sockets (the only type Tern carries).
    public static let streamFeature = VirtioFeatures(bit: 0)
    /// The well-known CID of the host.
    public static let hostCID: UInt64 = 2
    public static let receiveQueue = 0
    public static let transmitQueue = 1
    public static let eventQueue = 2
    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
    public static let transportResetEvent: UInt32 = 0
    /// Largest payload of one packet to the guest.
    public static let maximumPacketPayload: UInt32 = 64 * 1024
    /// First port the device gives the host end of host-initiated connections.
    public static let firstLocalPort: UInt32 = 1 << 30
    /// Most transmit-then-receive rounds one notification or host event runs.
    static let maximumRounds = 16

    /// The guest's context ID.
    public let guestCID: UInt32
    let memory: GuestMemory
    let backend: any VsockBackend
    let watcher: any HostEventWatcher
    let queueSize: UInt16
    /// Receive buffer advertised to the guest per connection, and the most guest bytes held for a host socket.
    let bufferSize: UInt32
    var connections: VsockConnectionTable
    var resetReplies = VsockResetReplies(capacity: 64)
    var receiveq: SplitQueue?
    var transmitq: SplitQueue?
    var eventq: SplitQueue?
    var interrupt: (any InterruptSignal)?
    var receiveChain: DescriptorChain
    /// A receive chain popped but not used yet (the host socket had nothing after all); it is used first.
    var holdsReceiveChain = false
    var transmitChain: DescriptorChain
    var eventChain: DescriptorChain
    /// The guest is owed TRANSPORT_RESET on the event queue.
    var transportResetPending = false
    var wasActivated = false
    var listenerWatched = false
    var nextLocalPort = Vsock.firstLocalPort

    /// A device giving the guest CID `guestCID` (3 to 2^32 - 2) that reaches the host through `backend` and
    /// watches sockets through `watcher`, the backend's listener from the first activation on (host connections
    /// wait in its backlog until then). Queues hold up to `queueSize` descriptors (a power of two); at most
    /// `maximumConnections` connections (host ones still sending their request included) are open at once, each
    /// buffering up to `bufferSize` bytes.
    public init(
        memory: GuestMemory, guestCID: UInt32, backend: any VsockBackend, watcher: any HostEventWatcher,
        queueSize: UInt16 = 256, maximumConnections: Int = 256, bufferSize: UInt32 = 64 * 1024
    ) {
        precondition(guestCID >= 3 && guestCID != UInt32.max, "guest CID \(guestCID) is reserved")
        precondition(
            queueSize != 0 && queueSize <= SplitQueue.maximumSize && queueSize & (queueSize - 1) == 0,
            "queue size \(queueSize) is not a power of two between 1 and \(SplitQueue.maximumSize)"
        )
        precondition(bufferSize > 0 && bufferSize <= 1 << 30, "buffer size \(bufferSize) is out of range")
        self.memory = memory
        self.guestCID = guestCID
        self.backend = backend
        self.watcher = watcher
        self.queueSize = queueSize
        self.bufferSize = bufferSize
        connections = VsockConnectionTable(capacity: maximumConnections)
        receiveChain = DescriptorChain(capacity: Int(queueSize))
        transmitChain = DescriptorChain(capacity: Int(queueSize))
        eventChain = DescriptorChain(capacity: Int(queueSize))
    }

    public var deviceType: VirtioDeviceType { .vsock }
    public var features: VirtioFeatures { [.version1, .eventIndex, .indirectDescriptors, Self.streamFeature] }
    public var queueCount: Int { 3 }
    public func maximumQueueSize(_ queue: Int) -> UInt16 { queue < 3 ? queueSize : 0 }
    /// guest_cid (le64).
    public var configurationSize: Int { 8 }

    public func readConfiguration(offset: Int, into buffer: UnsafeMutableRawBufferPointer) {
        for index in buffer.indices {
            let (byte, overflow) = offset.addingReportingOverflow(index)
            let inField = !overflow && (0..<4).contains(byte)
            buffer[index] = inField ? UInt8(truncatingIfNeeded: guestCID >> (8 * UInt32(byte))) : 0
        }
    }

    /// guest_cid is read-only.
    public mutating func writeConfiguration(offset: Int, bytes: UnsafeRawBufferPointer) {}

    public mutating func activate(
        features: VirtioFeatures, queues: [SplitQueue?], interrupt: any InterruptSignal
    ) throws(VirtioDeviceError) {
        guard queues.count == 3, let receiveq = queues[Self.receiveQueue], let transmitq = queues[Self.transmitQueue],
            let eventq = queues[Self.eventQueue]
        else { throw .activation("the receive, transmit and event queues must all be enabled") }
        if !listenerWatched {
            do {
                try watcher.watch(backend.listenerDescriptor, token: VsockConnectionTable.listenerToken)
            } catch {
                throw .activation("cannot watch the host socket: \(error)")
            }
            listenerWatched = true
        }
        self.receiveq = receiveq
        self.transmitq = transmitq
        self.eventq = eventq
        self.interrupt = interrupt
        holdsReceiveChain = false
        if wasActivated { transportResetPending = true }
        wasActivated = true
        acceptHostConnections()
        run()
        deliverEvents()
    }

    public mutating func notify(queue index: Int) {
        guard interrupt != nil else { return }
        switch index {
        case Self.eventQueue: deliverEvents()
        case Self.receiveQueue, Self.transmitQueue: run()
        default: return
        }
    }

    public mutating func reset() {
        closeAllConnections()
        receiveq = nil
        transmitq = nil
        eventq = nil
        interrupt = nil
        holdsReceiveChain = false
        transportResetPending = false
    }

    /// Closes every connection and tells the guest through TRANSPORT_RESET, as after the host side restarted.
    /// The event waits for an event buffer when the driver has none available.
    public mutating func resetTransport() {
        closeAllConnections()
        guard interrupt != nil else { return }
        transportResetPending = true
        deliverEvents()
    }

    /// The number of open connections, host connections still sending their request included.
    public var connectionCount: Int { connections.count }

    /// Takes guest packets and fills receive buffers. Guest packets are refused while RST replies wait for receive
    /// buffers, and taken again once those are sent, for a bounded number of rounds: a guest that keeps both
    /// queues full cannot hold the calling thread.
    mutating func run() {
        for _ in 0..<Self.maximumRounds where interrupt != nil {
            let stalled = processTransmitQueue()
            fillReceiveQueue()
            guard stalled, !resetReplies.isFull else { return }
        }
    }

    /// Writes TRANSPORT_RESET into an event buffer when one is owed and the driver made one available.
    mutating func deliverEvents() {
        guard transportResetPending, var queue = eventq, let interrupt else { return }
        do {
            // No buffer yet: ask for a notification when the driver adds one, and take any that arrived meanwhile.
            guard try queue.nextChain(into: &eventChain)
                || (queue.enableNotifications() && queue.nextChain(into: &eventChain))
            else {
                eventq = queue
                return
            }
        } catch {
            return fail("event queue: \(error)")
        }
        guard eventChain.readableCount == 0, eventChain.writableLength >= 4 else {
            return fail("event chain \(eventChain.head) is not a device-writable buffer of at least 4 bytes")
        }
        var event = Self.transportResetEvent.littleEndian
        let written = withUnsafeBytes(of: &event) {
            VsockSocketIO.scatter($0, into: memory, eventChain, segments: 0..<eventChain.count, skip: 0)
        }
        guard written else { return fail("event chain \(eventChain.head) has a buffer outside guest RAM") }
        queue.addUsed(head: eventChain.head, length: 4)
        transportResetPending = false
        if queue.needsNotification() { interrupt.signalUsedBuffers(queue: Self.eventQueue) }
        eventq = queue
    }

    /// Drops the queues and every connection, and asks the driver for a reset (once: nothing runs afterwards).
    mutating func fail(_ reason: String) {
        let interrupt = self.interrupt
        closeAllConnections()
        receiveq = nil
        transmitq = nil
        eventq = nil
        self.interrupt = nil
        holdsReceiveChain = false
        interrupt?.signalNeedsReset(reason: "virtio-vsock: \(reason)")
    }

    /// Closes every host socket and forgets every connection and pending reply, telling the guest nothing.
    mutating func closeAllConnections() {
        for slot in connections.slotNumbers where connections.isOccupied(slot) {
            closeSocket(slot)
            connections.remove(slot)
        }
        resetReplies.removeAll()
    }

    /// Stops watching and closes the host socket of the connection in `slot`.
    mutating func closeSocket(_ slot: Int) {
        let socket = connections[slot].socket
        guard socket >= 0 else { return }
        watcher.unwatch(socket)
        close(socket)
        connections[slot].socket = -1
    }
}

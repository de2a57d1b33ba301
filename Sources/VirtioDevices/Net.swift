import GuestMemory
import Virtio

/// Frame counts of a virtio-net device since it was created.
public struct NetStatistics: Sendable, Equatable {
    /// Frames the guest sent that the backend took.
    public var transmitted: UInt64
    /// Frames the guest sent that were dropped (runts, or refused by the backend).
    public var transmitDrops: UInt64
    /// Frames delivered to the guest.
    public var received: UInt64
    /// Frames from the backend that were dropped (malformed, offloads the guest did not accept, or too large
    /// for a receive buffer without MRG_RXBUF).
    public var receiveDrops: UInt64
}

/// A virtio-net device (VIRTIO 1.2 §5.1) over any `NetBackend`: receive queue 0, transmit queue 1, no control
/// queue and no multiqueue. The configuration space gives the MAC address, the link status (always up) and,
/// when one is set, the MTU.
///
/// The device offers MAC, STATUS and MRG_RXBUF, MTU when it has one, and the checksum and TCP segmentation
/// offloads (CSUM, GUEST_CSUM, HOST_TSO4/6, GUEST_TSO4/6) only as far as the backend handles them; with a
/// backend that handles none, frames cross without a header and the device computes nothing. Every chain is
/// validated (see `NetReceiver`, `NetTransmitter`); a violation sets DEVICE_NEEDS_RESET once and the device
/// leaves its queues alone until reset.
///
/// Frames from the backend arrive through `hostEvent(token:events:)`: the device watches the backend's
/// descriptor with token `backendToken` from `init`, so the VMM's I/O thread must route that token's events to
/// this device (under its transport's lock). A transmit pass sends at most one queue's worth of frames; when
/// more may wait, the device asks its transport for service (`InterruptSignal.requestService`) and goes on when
/// the I/O thread comes back to the transmit queue, after the other events it has.
public struct Net: VirtioDevice {
    /// Device-specific feature bits (VIRTIO 1.2 §5.1.3).
    public enum Feature {
        /// VIRTIO_NET_F_CSUM: the device completes partial checksums of frames the guest sends.
        public static let checksum = VirtioFeatures(bit: 0)
        /// VIRTIO_NET_F_GUEST_CSUM: the guest takes frames with partial checksums.
        public static let guestChecksum = VirtioFeatures(bit: 1)
        /// VIRTIO_NET_F_MTU: `mtu` is valid.
        public static let mtu = VirtioFeatures(bit: 3)
        /// VIRTIO_NET_F_MAC: `mac` is valid.
        public static let mac = VirtioFeatures(bit: 5)
        /// VIRTIO_NET_F_GUEST_TSO4: the guest takes TCP/IPv4 segments larger than the MTU.
        public static let guestTSO4 = VirtioFeatures(bit: 7)
        /// VIRTIO_NET_F_GUEST_TSO6: the guest takes TCP/IPv6 segments larger than the MTU.
        public static let guestTSO6 = VirtioFeatures(bit: 8)
        /// VIRTIO_NET_F_HOST_TSO4: the device takes TCP/IPv4 segments larger than the MTU.
        public static let hostTSO4 = VirtioFeatures(bit: 11)
        /// VIRTIO_NET_F_HOST_TSO6: the device takes TCP/IPv6 segments larger than the MTU.
        public static let hostTSO6 = VirtioFeatures(bit: 12)
        /// VIRTIO_NET_F_MRG_RXBUF: a received frame may span several receive chains.
        public static let mergeableReceiveBuffers = VirtioFeatures(bit: 15)
        /// VIRTIO_NET_F_STATUS: `status` is valid.
        public static let status = VirtioFeatures(bit: 16)
    }

    /// The receive queue's index.
    public static let receiveQueue = 0
    /// The transmit queue's index.
    public static let transmitQueue = 1
    /// The token the device watches its backend's descriptor with.
    public static let backendToken: UInt32 = 0
    /// The largest frame, without the virtio-net header, that crosses the device.
    public static let maximumFrameLength = 65550
    /// VIRTIO_NET_S_LINK_UP in `status`.
    private static let linkUp: UInt16 = 1

    private let backend: any NetBackend
    /// The address the configuration space reports.
    public let mac: MACAddress
    /// The MTU the configuration space reports, when set.
    public let mtu: UInt16?
    private let queueSize: UInt16
    private var receiver: NetReceiver
    private var transmitter: NetTransmitter
    private var interrupt: (any InterruptSignal)?

    /// A network device reading and writing guest buffers in `memory` and exchanging frames with `backend`,
    /// whose descriptor it watches through `watcher` with `backendToken`. It reports `mac`, and `mtu` when set,
    /// and offers queues of up to `queueSize` descriptors (a power of two). Throws when the descriptor cannot be
    /// watched.
    public init(
        memory: GuestMemory, backend: any NetBackend, watcher: any HostEventWatcher, mac: MACAddress,
        mtu: UInt16? = nil, queueSize: UInt16 = 256
    ) throws(HostEventError) {
        precondition(
            queueSize != 0 && queueSize <= SplitQueue.maximumSize && queueSize & (queueSize - 1) == 0,
            "queue size \(queueSize) is not a power of two between 1 and \(SplitQueue.maximumSize)"
        )
        let framed = !backend.offloads.isEmpty
        self.backend = backend
        self.mac = mac
        self.mtu = mtu
        self.queueSize = queueSize
        receiver = NetReceiver(memory: memory, headerFromBackend: framed, queueSize: queueSize)
        transmitter = NetTransmitter(memory: memory, headerToBackend: framed, queueSize: queueSize)
        try watcher.watch(backend.descriptor, token: Self.backendToken)
    }

    public var deviceType: VirtioDeviceType { .network }

    public var features: VirtioFeatures {
        var offered: VirtioFeatures = [
            .version1, .eventIndex, .indirectDescriptors, Feature.mac, Feature.status, Feature.mergeableReceiveBuffers,
        ]
        if mtu != nil { offered.insert(Feature.mtu) }
        let offloads = backend.offloads
        if offloads.contains(.checksum) {
            offered.formUnion([Feature.checksum, Feature.guestChecksum])
            if offloads.contains(.tcp4Segmentation) { offered.formUnion([Feature.hostTSO4, Feature.guestTSO4]) }
            if offloads.contains(.tcp6Segmentation) { offered.formUnion([Feature.hostTSO6, Feature.guestTSO6]) }
        }
        return offered
    }

    public var queueCount: Int { 2 }
    public func maximumQueueSize(_ queue: Int) -> UInt16 { queue < 2 ? queueSize : 0 }
    /// mac[6], status (le16), max_virtqueue_pairs (le16), mtu (le16).
    public var configurationSize: Int { 12 }

    /// Frame counts since the device was created.
    public var statistics: NetStatistics {
        NetStatistics(
            transmitted: transmitter.frames, transmitDrops: transmitter.drops,
            received: receiver.frames, receiveDrops: receiver.drops)
    }

    public func readConfiguration(offset: Int, into buffer: UnsafeMutableRawBufferPointer) {
        for index in buffer.indices {
            let (position, overflow) = offset.addingReportingOverflow(index)
            buffer[index] = overflow ? 0 : configurationByte(position)
        }
    }

    /// The configuration byte at `offset` (VIRTIO 1.2 §5.1.4, little-endian); absent fields read as zero.
    private func configurationByte(_ offset: Int) -> UInt8 {
        let field: UInt16
        switch offset {
        case 0..<6: return mac[offset]
        case 6..<8: field = Self.linkUp  // status
        case 8..<10: field = 1  // max_virtqueue_pairs
        case 10..<12: field = mtu ?? 0
        default: return 0
        }
        return UInt8(truncatingIfNeeded: field >> (8 * UInt16(offset & 1)))
    }

    /// Every field is read-only to a VIRTIO 1.x driver, so writes are ignored.
    public mutating func writeConfiguration(offset: Int, bytes: UnsafeRawBufferPointer) {}

    public mutating func activate(
        features: VirtioFeatures, queues: [SplitQueue?], interrupt: any InterruptSignal
    ) throws(VirtioDeviceError) {
        guard queues.count == 2, let receiveq = queues[Self.receiveQueue], let transmitq = queues[Self.transmitQueue]
        else { throw .activation("the receive and transmit queues must both be enabled") }
        for queue in [receiveq, transmitq] where queue.size > queueSize {
            throw .activation("queue size \(queue.size) is above the device maximum \(queueSize)")
        }
        var accepted: NetOffloads = []
        if features.contains(Feature.guestChecksum) {
            accepted.insert(.checksum)
            if features.contains(Feature.guestTSO4) { accepted.insert(.tcp4Segmentation) }
            if features.contains(Feature.guestTSO6) { accepted.insert(.tcp6Segmentation) }
        }
        accepted.formIntersection(backend.offloads)
        backend.setReceiveOffloads(accepted)
        receiver.start(
            queue: receiveq, mergeable: features.contains(Feature.mergeableReceiveBuffers), accepted: accepted)
        transmitter.start(queue: transmitq)
        self.interrupt = interrupt
        // Frames that arrived before the driver was ready raised no event that the device acted on.
        receive()
    }

    /// Transmit notifications send frames; receive notifications resume a frame waiting for buffers.
    public mutating func notify(queue index: Int) {
        switch index {
        case Self.transmitQueue: transmit()
        case Self.receiveQueue where receiver.isWaitingForBuffers: receive()
        default: break
        }
    }

    /// The backend's descriptor became readable (frames wait) or writable (a blocked frame may go now).
    public mutating func hostEvent(token: UInt32, events: HostEventKind) {
        guard token == Self.backendToken else { return }
        if events.contains(.writable) && transmitter.isBlocked { transmit() }
        if !events.isDisjoint(with: [.readable, .hangup]) { receive() }
    }

    public mutating func reset() {
        receiver.stop()
        transmitter.stop()
        interrupt = nil
        backend.setReceiveOffloads([])
    }

    private mutating func receive() {
        guard let interrupt else { return }
        do {
            if try receiver.pump(from: backend) { interrupt.signalUsedBuffers(queue: Self.receiveQueue) }
        } catch {
            fail(interrupt, error.reason)
        }
    }

    private mutating func transmit() {
        guard let interrupt else { return }
        do {
            let outcome = try transmitter.pump(to: backend)
            if outcome.notify { interrupt.signalUsedBuffers(queue: Self.transmitQueue) }
            if outcome.exhausted { interrupt.requestService(queue: Self.transmitQueue) }
        } catch {
            fail(interrupt, error.reason)
        }
    }

    /// Drops both queues and asks the driver for a reset.
    private mutating func fail(_ interrupt: any InterruptSignal, _ reason: String) {
        receiver.stop()
        transmitter.stop()
        self.interrupt = nil
        interrupt.signalNeedsReset(reason: "virtio-net: \(reason)")
    }
}

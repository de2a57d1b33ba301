import GuestMemory
import TestSupport
import Testing
import Virtio
import VirtioDevices

@Suite struct VirtioNetTests {
    static let rx = Net.receiveQueue
    static let tx = Net.transmitQueue

    @Test func offersFeaturesFromTheBackend() throws {
        let bare = try NetHarness(activate: false)
        #expect(bare.device.deviceType == .network)
        #expect(bare.device.queueCount == 2)
        #expect(bare.device.maximumQueueSize(0) == 16 && bare.device.maximumQueueSize(1) == 16)
        #expect(bare.device.maximumQueueSize(2) == 0)
        // VERSION_1, EVENT_IDX, INDIRECT_DESC, MAC, STATUS, MRG_RXBUF; no offloads.
        let plain = VirtioFeatures(bits: [32, 29, 28, 5, 16, 15])
        #expect(bare.device.features == plain)
        let offloading = try NetHarness(offloads: [.checksum, .tcp4Segmentation, .tcp6Segmentation], mtu: 1400, activate: false)
        let offloaded = plain.union(VirtioFeatures(bits: [3, 0, 1, 7, 8, 11, 12]))
        #expect(offloading.device.features == offloaded)
        // TSO without checksum offload is not offered.
        let partial = try NetHarness(offloads: [.tcp4Segmentation], activate: false)
        #expect(partial.device.features == bare.device.features)
        #expect(Array(bare.watcher.descriptors.values) == [Net.backendToken])
        #expect(bare.watcher.descriptor(for: Net.backendToken) == 42)
    }

    @Test func configurationSpace() throws {
        let device = try NetHarness(mtu: 1400, activate: false).device
        #expect(device.configurationSize == 12)
        var bytes = [UInt8](repeating: 0xAA, count: 14)
        bytes.withUnsafeMutableBytes { device.readConfiguration(offset: 0, into: $0) }
        #expect(bytes == [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0x78, 0x05, 0, 0])
        var status = [UInt8](repeating: 0xAA, count: 2)
        status.withUnsafeMutableBytes { device.readConfiguration(offset: 6, into: $0) }
        #expect(status == [1, 0])
        let noMTU = try NetHarness(activate: false).device
        var mtu = [UInt8](repeating: 0xAA, count: 2)
        mtu.withUnsafeMutableBytes { noMTU.readConfiguration(offset: 10, into: $0) }
        #expect(mtu == [0, 0])
    }

    @Test func transmitStripsTheHeaderForABareBackend() throws {
        var harness = try NetHarness()
        let frame = ethernetFrame(100, seed: 1)
        try harness.transmit(netHeader() + frame, split: 7)
        #expect(harness.backend.sent == [frame])
        #expect(try harness.usedIndex(Self.tx) == 1)
        #expect(try harness.usedElement(Self.tx, 0) == (0, 0))
        #expect(harness.interrupt.usedBuffers == 1)
        #expect(harness.device.statistics.transmitted == 1)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func transmitKeepsTheHeaderForAnOffloadingBackend() throws {
        var harness = try NetHarness(offloads: [.checksum, .tcp4Segmentation])
        let bytes = netHeader(flags: 1, gso: 1) + ethernetFrame(1500, seed: 2)
        try harness.memory.write(bytes, at: 0x20_0000)
        // Header and frame through an indirect table, in three pieces.
        try harness.publish(Self.tx, [
            ChainBuffer(address: 0x20_0000, length: 12, isWrite: false),
            ChainBuffer(address: 0x20_000C, length: 500, isWrite: false),
            ChainBuffer(address: 0x20_0200, length: UInt32(bytes.count - 512), isWrite: false),
        ], indirect: true)
        harness.device.notify(queue: Self.tx)
        #expect(harness.backend.sent == [bytes])
        #expect(try harness.usedIndex(Self.tx) == 1)
    }

    @Test func transmitDropsRunts() throws {
        var harness = try NetHarness()
        try harness.transmit(netHeader() + [1, 2, 3])
        try harness.transmit(netHeader())
        #expect(harness.backend.sent.isEmpty)
        #expect(try harness.usedIndex(Self.tx) == 2)
        #expect(harness.device.statistics.transmitDrops == 2)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func blockedBackendHoldsTheChainUntilWritable() throws {
        var harness = try NetHarness()
        harness.backend.state.withLock { $0.blocked = true }
        let first = ethernetFrame(64, seed: 3)
        try harness.transmit(netHeader() + first)
        try harness.transmit(netHeader() + ethernetFrame(64, seed: 4), at: 0x20_1000)
        #expect(try harness.usedIndex(Self.tx) == 0)
        // Still blocked: nothing moves.
        harness.device.hostEvent(token: Net.backendToken, events: .writable)
        #expect(try harness.usedIndex(Self.tx) == 0)
        harness.backend.state.withLock { $0.blocked = false }
        harness.device.hostEvent(token: Net.backendToken, events: .writable)
        #expect(harness.backend.sent == [first, ethernetFrame(64, seed: 4)])
        #expect(try harness.usedIndex(Self.tx) == 2)
        // Another token is not the device's.
        harness.device.hostEvent(token: 7, events: .readable)
        #expect(harness.backend.state.withLock { $0.reads } == 1)
    }

    @Test func fullTransmitPassAsksForService() throws {
        var harness = try NetHarness()
        // A whole queue's worth in one pass uses up the budget: the device asks to be served again.
        for index in 0..<Int(NetHarness.queueSize) {
            let address = 0x20_0000 + 0x1000 * UInt64(index)
            try harness.memory.write(netHeader() + ethernetFrame(60, seed: UInt8(index)), at: address)
            try harness.publish(Self.tx, [ChainBuffer(address: address, length: 72, isWrite: false)])
        }
        harness.device.notify(queue: Self.tx)
        #expect(harness.backend.sent.count == 16)
        #expect(harness.interrupt.serviceRequests == [Self.tx])
        // More chains, but no notification from the driver: the service call sends them, and asks for no more.
        try harness.memory.write(netHeader() + ethernetFrame(60, seed: 99), at: 0x30_0000)
        try harness.publish(Self.tx, [ChainBuffer(address: 0x30_0000, length: 72, isWrite: false)])
        harness.device.notify(queue: Self.tx)
        #expect(harness.backend.sent.count == 17)
        #expect(harness.backend.sent.last == ethernetFrame(60, seed: 99))
        #expect(harness.interrupt.serviceRequests == [Self.tx])
        #expect(try harness.usedIndex(Self.tx) == 17)
    }

    @Test func receiveWithoutMergeableBuffers() throws {
        var harness = try NetHarness(declined: Net.Feature.mergeableReceiveBuffers)
        try harness.publish(Self.rx, [
            ChainBuffer(address: 0x30_0000, length: 10, isWrite: true),
            ChainBuffer(address: 0x30_1000, length: 2000, isWrite: true),
        ])
        let frame = ethernetFrame(1000, seed: 5)
        harness.backend.queue(frame)
        harness.backendReadable()
        #expect(try harness.usedIndex(Self.rx) == 1)
        #expect(try harness.usedElement(Self.rx, 0) == (0, 1012))
        // The header straddles the two buffers; num_buffers is 1.
        let written = try harness.memory.bytes(at: 0x30_0000, count: 10) + harness.memory.bytes(at: 0x30_1000, count: 1002)
        #expect(written == netHeader(buffers: 1) + frame)
        #expect(harness.interrupt.usedBuffers == 1)
        #expect(harness.device.statistics.received == 1)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func receiveSpreadsAFrameOverMergeableBuffers() throws {
        var harness = try NetHarness()
        for index in 0..<4 {
            try harness.publish(Self.rx, [ChainBuffer(address: 0x30_0000 + 0x1000 * UInt64(index), length: 1024, isWrite: true)])
        }
        let frame = ethernetFrame(2800, seed: 6)
        harness.backend.queue(frame)
        harness.backendReadable()
        #expect(try harness.usedIndex(Self.rx) == 3)
        #expect(try harness.usedElement(Self.rx, 0) == (0, 1024))
        #expect(try harness.usedElement(Self.rx, 1) == (1, 1024))
        #expect(try harness.usedElement(Self.rx, 2) == (2, 764))
        var written: [UInt8] = []
        for (index, length) in [1024, 1024, 764].enumerated() {
            written += try harness.memory.bytes(at: 0x30_0000 + 0x1000 * UInt64(index), count: length)
        }
        #expect(written == netHeader(buffers: 3) + frame)
        #expect(harness.interrupt.usedBuffers == 1)
    }

    @Test func frameWaitsForBuffersAndResumesOnNotification() throws {
        var harness = try NetHarness()
        let first = ethernetFrame(300, seed: 7)
        let second = ethernetFrame(200, seed: 8)
        harness.backend.queue(first)
        harness.backend.queue(second)
        harness.backendReadable()
        // One frame taken and kept; the backend is not read further while the guest has no buffers.
        #expect(harness.backend.waiting == 1)
        harness.backendReadable()
        #expect(harness.backend.waiting == 1)
        #expect(try harness.usedIndex(Self.rx) == 0)
        // Part of the frame goes into the only buffer; the rest waits for the next one.
        try harness.publish(Self.rx, [ChainBuffer(address: 0x30_0000, length: 256, isWrite: true)])
        harness.device.notify(queue: Self.rx)
        #expect(try harness.usedIndex(Self.rx) == 0)
        try harness.publish(Self.rx, [ChainBuffer(address: 0x31_0000, length: 2048, isWrite: true)])
        try harness.publish(Self.rx, [ChainBuffer(address: 0x32_0000, length: 2048, isWrite: true)])
        harness.device.notify(queue: Self.rx)
        #expect(try harness.usedIndex(Self.rx) == 3)
        #expect(try harness.usedElement(Self.rx, 0) == (0, 256))
        #expect(try harness.usedElement(Self.rx, 1) == (1, 56))
        #expect(try harness.usedElement(Self.rx, 2) == (2, 212))
        let delivered = try harness.memory.bytes(at: 0x30_0000, count: 256) + harness.memory.bytes(at: 0x31_0000, count: 56)
        #expect(delivered == netHeader(buffers: 2) + first)
        #expect(try harness.memory.bytes(at: 0x32_0000, count: 212) == netHeader(buffers: 1) + second)
        #expect(harness.backend.waiting == 0)
    }

    @Test func framesWaitingBeforeActivationAreDelivered() throws {
        var harness = try NetHarness(activate: false)
        harness.backend.queue(ethernetFrame(60, seed: 9))
        harness.backendReadable()
        #expect(harness.backend.state.withLock { $0.reads } == 0)
        try harness.activate()
        #expect(harness.backend.waiting == 0)
        try harness.publish(Self.rx, [ChainBuffer(address: 0x30_0000, length: 1526, isWrite: true)])
        harness.device.notify(queue: Self.rx)
        #expect(try harness.usedElement(Self.rx, 0) == (0, 72))
    }

    @Test func tooSmallChainWithoutMergeableBuffersDropsTheFrame() throws {
        var harness = try NetHarness(declined: Net.Feature.mergeableReceiveBuffers)
        try harness.publish(Self.rx, [ChainBuffer(address: 0x30_0000, length: 100, isWrite: true)])
        let small = ethernetFrame(80, seed: 10)
        harness.backend.queue(ethernetFrame(500, seed: 11))
        harness.backend.queue(small)
        harness.backendReadable()
        // The large frame is dropped; its chain takes the small one.
        #expect(try harness.usedIndex(Self.rx) == 1)
        #expect(try harness.usedElement(Self.rx, 0) == (0, 92))
        #expect(try harness.memory.bytes(at: 0x30_0000, count: 92) == netHeader(buffers: 1) + small)
        #expect(harness.device.statistics.receiveDrops == 1)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func backendHeadersFollowTheNegotiatedOffloads() throws {
        // The guest accepts no offloads: a partial checksum or a large segment is dropped, DATA_VALID cleared.
        var harness = try NetHarness(
            offloads: [.checksum, .tcp4Segmentation], declined: [Net.Feature.guestChecksum, Net.Feature.guestTSO4])
        #expect(harness.backend.state.withLock { $0.receiveOffloads } == [])
        let frame = ethernetFrame(100, seed: 12)
        harness.backend.queue(netHeader(flags: 1) + frame)
        harness.backend.queue(netHeader(gso: 1) + frame)
        harness.backend.queue(netHeader(gso: 3) + frame)
        harness.backend.queue([1, 2, 3])
        harness.backend.queue(netHeader(flags: 2 | 4) + frame)
        try harness.publish(Self.rx, [ChainBuffer(address: 0x30_0000, length: 1526, isWrite: true)])
        harness.backendReadable()
        #expect(try harness.usedIndex(Self.rx) == 1)
        #expect(try harness.memory.bytes(at: 0x30_0000, count: 112) == netHeader(buffers: 1) + frame)
        #expect(harness.device.statistics.receiveDrops == 4)

        // A guest that accepts them gets them, with flags it knows.
        var accepting = try NetHarness(offloads: [.checksum, .tcp4Segmentation])
        #expect(accepting.backend.state.withLock { $0.receiveOffloads } == [.checksum, .tcp4Segmentation])
        accepting.backend.queue(netHeader(flags: 1 | 2 | 4, gso: 1) + frame)
        try accepting.publish(Self.rx, [ChainBuffer(address: 0x30_0000, length: 1526, isWrite: true)])
        accepting.backendReadable()
        #expect(try accepting.memory.bytes(at: 0x30_0000, count: 112) == netHeader(flags: 3, gso: 1, buffers: 1) + frame)
        accepting.device.reset()
        #expect(accepting.backend.state.withLock { $0.receiveOffloads } == [])
    }

    @Test func resetStopsTheQueues() throws {
        var harness = try NetHarness()
        harness.device.reset()
        try harness.transmit(netHeader() + ethernetFrame(64, seed: 13))
        harness.backend.queue(ethernetFrame(64, seed: 14))
        try harness.publish(Self.rx, [ChainBuffer(address: 0x30_0000, length: 1526, isWrite: true)])
        harness.backendReadable()
        harness.device.notify(queue: Self.rx)
        #expect(harness.backend.sent.isEmpty)
        #expect(try harness.usedIndex(Self.rx) == 0 && harness.usedIndex(Self.tx) == 0)
    }

    @Test(arguments: HostileChain.allCases)
    func hostileChainNeedsReset(_ hostile: HostileChain) throws {
        var harness = try NetHarness()
        try hostile.submit(&harness)
        #expect(harness.interrupt.resetReasons == ["virtio-net: \(hostile.reason)"])
        // The device leaves its queues alone afterwards, and reports only once.
        try harness.transmit(netHeader() + ethernetFrame(64, seed: 15), at: 0x28_0000)
        harness.backend.queue(ethernetFrame(64, seed: 16))
        try harness.publish(Self.rx, [ChainBuffer(address: 0x3F_0000, length: 1526, isWrite: true)])
        harness.backendReadable()
        harness.device.notify(queue: Self.rx)
        #expect(harness.interrupt.resetReasons.count == 1)
        #expect(harness.backend.sent.isEmpty)
    }

    @Test func macAddresses() throws {
        let mac = try MACAddress(parsing: "52:54:00:ab:CD:0f")
        #expect(mac.rawValue == 0x5254_00AB_CD0F)
        #expect(mac.description == "52:54:00:ab:cd:0f")
        #expect(MACAddress.locallyAdministered(suffix: 0xFF12_3456).description == "52:54:00:12:34:56")
        for bad in ["", "52:54:00:12:34", "52:54:00:12:34:56:78", "52-54-00-12-34-56", "52:54:00:12:34:5", "52:54:00:12:34:+5",
            "52:54:00:12:34:gg"]
        {
            #expect(throws: MACAddressError.self) { try MACAddress(parsing: bad) }
        }
        #expect(throws: MACAddressError("'01:00:5e:00:00:01' is a multicast address; the first byte must be even, like 52:54:00:12:34:56")) {
            try MACAddress(parsing: "01:00:5e:00:00:01")
        }
    }
}

/// Chains that break virtio-net's rules.
enum HostileChain: CaseIterable, CustomStringConvertible, Sendable {
    case writableOnTransmit, shortTransmitHeader, oversizedTransmit, readableOnReceive, shortReceiveHeader,
        tooSmallMergeable, loopOnTransmit

    var description: String {
        switch self {
        case .writableOnTransmit: "device-writable buffer on the transmit queue"
        case .shortTransmitHeader: "transmit chain shorter than the header"
        case .oversizedTransmit: "transmit chain longer than the largest frame"
        case .readableOnReceive: "device-readable buffer on the receive queue"
        case .shortReceiveHeader: "receive chain shorter than the header"
        case .tooSmallMergeable: "mergeable buffers that together cannot hold a frame"
        case .loopOnTransmit: "descriptor loop on the transmit queue"
        }
    }

    /// What the reset reason says.
    var reason: String {
        switch self {
        case .writableOnTransmit: "transmit chain 0 has device-writable buffers"
        case .shortTransmitHeader: "transmit chain 0 holds 11 bytes, less than the 12-byte header"
        case .oversizedTransmit: "transmit chain 0 holds 65563 bytes, more than a 65550-byte frame and its header"
        case .readableOnReceive: "receive chain 0 has device-readable buffers"
        case .shortReceiveHeader: "receive chain 0 holds 11 bytes, less than the 12-byte header"
        case .tooSmallMergeable: "the receive queue's 16 buffers hold fewer than the 1012 bytes of one frame"
        case .loopOnTransmit: "transmit queue: chain from head 0 is longer than 16 descriptors (a loop?)"
        }
    }

    func submit(_ harness: inout NetHarness) throws {
        let rx = Net.receiveQueue
        let tx = Net.transmitQueue
        switch self {
        case .writableOnTransmit:
            try harness.publish(tx, [
                ChainBuffer(address: 0x20_0000, length: 80, isWrite: false), ChainBuffer(address: 0x21_0000, length: 4, isWrite: true),
            ])
            harness.device.notify(queue: tx)
        case .shortTransmitHeader:
            try harness.publish(tx, [ChainBuffer(address: 0x20_0000, length: 11, isWrite: false)])
            harness.device.notify(queue: tx)
        case .oversizedTransmit:
            try harness.publish(tx, [ChainBuffer(address: 0x20_0000, length: UInt32(12 + Net.maximumFrameLength + 1), isWrite: false)])
            harness.device.notify(queue: tx)
        case .readableOnReceive:
            try harness.publish(rx, [ChainBuffer(address: 0x30_0000, length: 1526, isWrite: false)])
            harness.backend.queue(ethernetFrame(64, seed: 1))
            harness.backendReadable()
        case .shortReceiveHeader:
            try harness.publish(rx, [ChainBuffer(address: 0x30_0000, length: 11, isWrite: true)])
            harness.backend.queue(ethernetFrame(64, seed: 1))
            harness.backendReadable()
        case .tooSmallMergeable:
            // Sixteen 12-byte buffers fill the queue and hold 192 bytes, short of a 1000-byte frame.
            for index in 0..<16 {
                try harness.publish(rx, [ChainBuffer(address: 0x30_0000 + 0x100 * UInt64(index), length: 12, isWrite: true)])
            }
            harness.backend.queue(ethernetFrame(1000, seed: 1))
            harness.backendReadable()
        case .loopOnTransmit:
            try harness.publish(tx, [ChainBuffer(address: 0x20_0000, length: 80, isWrite: false)])
            // Descriptor 0 points at itself.
            let table = NetHarness.rings[tx].table
            try harness.memory.store(UInt16(1), at: table + 12)
            try harness.memory.store(UInt16(0), at: table + 14)
            harness.device.notify(queue: tx)
        }
    }
}

import Glibc
import TestSupport
import Testing
import Virtio
import VirtioDevices

/// A hostile guest: protocol mistakes reset one connection; malformed chains reset the device, once.
@Suite(.timeLimit(.minutes(1))) struct VsockHostileTests {
    /// A harness with an established guest-initiated connection (guest port 5, host port 6) and its host socket.
    static func connected() throws -> (VsockHarness, Int32) {
        try VsockCreditTests.connected()
    }

    @Test(arguments: [
        ("unknown op", VsockHeader(sourceCID: 3, destinationCID: 2, sourcePort: 5, destinationPort: 6, operation: 99)),
        ("op 0", VsockHeader(sourceCID: 3, destinationCID: 2, sourcePort: 5, destinationPort: 6, operation: 0)),
        ("seqpacket", VsockHeader(sourceCID: 3, destinationCID: 2, sourcePort: 5, destinationPort: 6, type: 2, operation: 5)),
        ("second request", VsockHeader(sourceCID: 3, destinationCID: 2, sourcePort: 5, destinationPort: 6, operation: 1)),
        ("response from the connecting side", VsockHeader(sourceCID: 3, destinationCID: 2, sourcePort: 5, destinationPort: 6, operation: 2)),
    ])
    func protocolMistakeResetsTheConnection(_ name: String, _ header: VsockHeader) throws {
        var (harness, host) = try Self.connected()
        defer { close(host) }
        try harness.send(header)
        let packets = try harness.receive()
        #expect(packets.map(\.operation) == [VsockOp.reset], "\(name)")
        #expect(packets.first?.header.sourcePort == 6 && packets.first?.header.destinationPort == 5)
        #expect(VsockHostSocket.isClosed(host))
        #expect(harness.device.connectionCount == 0)
        // Packets for the closed connection are answered with RST too; nothing else breaks.
        try harness.send(harness.header(VsockOp.readWrite, guestPort: 5, hostPort: 6, length: 1), payload: [1])
        #expect(try harness.receive().map(\.operation) == [VsockOp.reset])
        #expect(!harness.interrupt.needsReset)
    }

    @Test func foreignAddressesAreRefused() throws {
        var harness = try VsockHarness()
        let service = VsockHostSocket.listen(harness.socketPath + "_6")
        defer { close(service) }
        try harness.postReceiveBuffers()
        var spoofed = harness.header(VsockOp.request, guestPort: 5, hostPort: 6)
        spoofed.sourceCID = 7
        try harness.send(spoofed)
        var toOther = harness.header(VsockOp.request, guestPort: 5, hostPort: 6)
        toOther.destinationCID = 9
        try harness.send(toOther)
        try harness.send(harness.header(VsockOp.readWrite, guestPort: 8, hostPort: 9, length: 0))
        try harness.send(harness.header(VsockOp.creditRequest, guestPort: 8, hostPort: 9))
        // An RST is never answered.
        try harness.send(harness.header(VsockOp.reset, guestPort: 8, hostPort: 9))
        let packets = try harness.receive()
        #expect(packets.map(\.operation) == [VsockOp.reset, VsockOp.reset, VsockOp.reset, VsockOp.reset])
        #expect(packets.allSatisfy { $0.header.destinationCID == 3 })
        #expect(packets[1].header.sourceCID == 9)
        #expect(packets[2].header.sourcePort == 9 && packets[2].header.destinationPort == 8)
        #expect(harness.device.connectionCount == 0)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func dataBeforeTheGuestAcceptedResets() throws {
        var harness = try VsockHarness()
        try harness.postReceiveBuffers()
        let host = VsockHostSocket.connect(harness.socketPath)
        defer { close(host) }
        VsockHostSocket.write(host, "CONNECT 4\n")
        #expect(try harness.pumpUntilPackets().map(\.operation) == [VsockOp.request])
        try harness.send(harness.header(VsockOp.readWrite, guestPort: 4, hostPort: Vsock.firstLocalPort, length: 2), payload: [1, 2])
        #expect(try harness.receive().map(\.operation) == [VsockOp.reset])
        #expect(VsockHostSocket.isClosed(host))
    }

    /// Malformed chains, each on a fresh device with an open connection.
    enum Malformation: CaseIterable {
        case shortHeader, lengthBeyondChain, writableOnTransmit, readableReceiveBuffer, receiveBufferWithoutRoom
        case shortEventBuffer, transmitBufferOutsideRAM
    }

    @Test(arguments: Malformation.allCases)
    func malformedChainNeedsResetOnce(_ malformation: Malformation) throws {
        var harness: VsockHarness
        let host: Int32
        if malformation == .readableReceiveBuffer || malformation == .receiveBufferWithoutRoom {
            // The first receive buffer is the bad one; the RESPONSE to a new connection needs it.
            harness = try VsockHarness()
            let service = VsockHostSocket.listen(harness.socketPath + "_6")
            defer { close(service) }
            let isWrite = malformation == .receiveBufferWithoutRoom
            let length: UInt32 = isWrite ? 44 : 4096
            try harness.publish(0, [ChainBuffer(address: VsockHarness.receiveAddress(0), length: length, isWrite: isWrite)], head: 0)
            try harness.send(harness.header(VsockOp.request, guestPort: 5, hostPort: 6))
            host = VsockHostSocket.accept(service)
        } else {
            (harness, host) = try Self.connected()
        }
        defer { close(host) }
        let address = VsockHarness.transmitAddress(7)
        switch malformation {
        case .shortHeader:
            try harness.send(harness.header(VsockOp.creditRequest, guestPort: 5, hostPort: 6), buffers: [
                ChainBuffer(address: address, length: 20, isWrite: false)
            ])
        case .lengthBeyondChain:
            try harness.send(
                harness.header(VsockOp.readWrite, guestPort: 5, hostPort: 6, length: 100), payload: [UInt8](repeating: 1, count: 99))
        case .writableOnTransmit:
            try harness.send(harness.header(VsockOp.creditRequest, guestPort: 5, hostPort: 6), buffers: [
                ChainBuffer(address: address, length: 44, isWrite: false),
                ChainBuffer(address: address + 0x100, length: 8, isWrite: true),
            ])
        case .readableReceiveBuffer, .receiveBufferWithoutRoom:
            break
        case .shortEventBuffer:
            try harness.postEventBuffer(length: 2)
            harness.device.resetTransport()
        case .transmitBufferOutsideRAM:
            try harness.send(harness.header(VsockOp.creditRequest, guestPort: 5, hostPort: 6), buffers: [
                ChainBuffer(address: 64 << 20, length: 44, isWrite: false)
            ])
        }
        #expect(VsockHostSocket.isClosed(host), "\(malformation): the connection stays open")
        #expect(harness.interrupt.resetReasons.count == 1, "\(malformation)")
        #expect(harness.device.connectionCount == 0)
        // The device stays quiet until reset.
        try harness.send(harness.header(VsockOp.request, guestPort: 9, hostPort: 6))
        try harness.postEventBuffer()
        harness.pump()
        #expect(harness.interrupt.resetReasons.count == 1)
        let reason = harness.interrupt.resetReasons.first ?? ""
        #expect(reason.hasPrefix("virtio-vsock: ") && !reason.contains("\n"), "\(reason)")
    }

    @Test func resetRepliesThatCannotBeSentStallTheTransmitQueue() throws {
        var harness = try VsockHarness()
        var taken = 0
        for port in UInt32(0)..<70 where try harness.send(harness.header(VsockOp.readWrite, guestPort: port, hostPort: 1)) {
            taken += 1
        }
        #expect(taken == 64)
        // Notifications are asked for again at the stall (avail_event names the next chain), so the driver's next
        // packet wakes the device.
        let rings = VsockHarness.rings(1)
        #expect(try harness.memory.load(UInt16.self, at: rings.used + 4 + 8 * UInt64(VsockHarness.queueSize)) == 64)
        // Receive buffers let the replies out, and the stalled packets are taken.
        var replies = 0
        try harness.postReceiveBuffers()
        for _ in 0..<20 { replies += try harness.receive().filter { $0.operation == VsockOp.reset }.count }
        #expect(replies == 70)
        #expect(!harness.interrupt.needsReset)
    }
}

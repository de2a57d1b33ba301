import Glibc
import Testing
import Virtio
import VirtioDevices

/// Credit-based flow control in both directions.
@Suite(.timeLimit(.minutes(1))) struct VsockCreditTests {
    /// A harness with one established guest-initiated connection (guest port 5, host port 6) and its host socket.
    static func connected(bufferSize: UInt32 = 64 * 1024, guestBuffer: UInt32 = 65536) throws -> (VsockHarness, Int32) {
        var harness = try VsockHarness(bufferSize: bufferSize)
        harness.guestBuffer = guestBuffer
        let service = VsockHostSocket.listen(harness.socketPath + "_6")
        defer { close(service) }
        try harness.postReceiveBuffers()
        try harness.send(harness.header(VsockOp.request, guestPort: 5, hostPort: 6))
        #expect(try harness.receive().map(\.operation) == [VsockOp.response])
        return (harness, VsockHostSocket.accept(service))
    }

    @Test func deviceNeverExceedsTheGuestsCredit() throws {
        var (harness, host) = try Self.connected(guestBuffer: 100)
        defer { close(host) }
        let data = pattern(300, seed: 1)
        VsockHostSocket.write(host, data)
        var received: [UInt8] = []
        var packets = try harness.pumpUntilPackets()
        received += packets.filter { $0.operation == VsockOp.readWrite }.flatMap(\.payload)
        #expect(received == Array(data[0..<100]))
        // Out of credit with data waiting: the device asks for credit, once.
        #expect(packets.map(\.operation) == [VsockOp.readWrite, VsockOp.creditRequest])
        harness.pump()
        #expect(try harness.receive().isEmpty)

        // The guest consumed 100 bytes: the next 100 flow.
        try harness.send(harness.header(VsockOp.creditUpdate, guestPort: 5, hostPort: 6, forwardCount: 100))
        packets = try harness.receive()
        received += packets.filter { $0.operation == VsockOp.readWrite }.flatMap(\.payload)
        #expect(received == Array(data[0..<200]))
        // A larger window lets the rest through.
        harness.guestBuffer = 1000
        try harness.send(harness.header(VsockOp.creditUpdate, guestPort: 5, hostPort: 6, forwardCount: 200))
        packets = try harness.receive()
        received += packets.filter { $0.operation == VsockOp.readWrite }.flatMap(\.payload)
        #expect(received == data)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func packetsFitTheReceiveBuffers() throws {
        var harness = try VsockHarness()
        let service = VsockHostSocket.listen(harness.socketPath + "_6")
        defer { close(service) }
        try harness.postReceiveBuffers(8, size: VsockHeader.size + 64)
        try harness.send(harness.header(VsockOp.request, guestPort: 5, hostPort: 6))
        let host = VsockHostSocket.accept(service)
        defer { close(host) }
        #expect(try harness.receive().map(\.operation) == [VsockOp.response])
        let data = pattern(200, seed: 2)
        VsockHostSocket.write(host, data)
        var packets: [VsockReceivedPacket] = []
        for _ in 0..<4 { packets += try harness.pumpUntilPackets(attempts: 3) }
        #expect(packets.map(\.payload.count) == [64, 64, 64, 8])
        #expect(packets.flatMap(\.payload) == data)
    }

    @Test func deviceAnswersCreditRequests() throws {
        var (harness, host) = try Self.connected()
        defer { close(host) }
        let data = pattern(1000, seed: 3)
        try harness.send(harness.header(VsockOp.readWrite, guestPort: 5, hostPort: 6, length: data.count), payload: data)
        #expect(VsockHostSocket.read(host, count: 1000) == data)
        try harness.send(harness.header(VsockOp.creditRequest, guestPort: 5, hostPort: 6))
        let packets = try harness.receive()
        #expect(packets.map(\.operation) == [VsockOp.creditUpdate])
        #expect(packets.first?.header.forwardCount == 1000)
        #expect(packets.first?.header.bufferAllocation == UInt32(65536))
    }

    @Test func deviceBuffersWithinItsCreditAndReportsProgress() throws {
        let bufferSize: UInt32 = 8192
        var (harness, host) = try Self.connected(bufferSize: bufferSize)
        defer { close(host) }
        // Make the device's host socket take little, so that guest data backs up in the device.
        let deviceSocket = try #require(harness.watcher.descriptors.first(where: { $0.value != 0 })?.key)
        var small: Int32 = 4096
        setsockopt(deviceSocket, SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))

        // The guest sends within the credit it knows of (buf_alloc - (sent - fwd_cnt)), until none is left.
        var sent: UInt32 = 0
        var knownForwarded: UInt32 = 0
        var data: [UInt8] = []
        while true {
            for packet in try harness.receive() { knownForwarded = packet.header.forwardCount }
            let credit = Int(bufferSize) - (Int(sent) - Int(knownForwarded))
            guard credit >= 1024 else { break }
            let chunk = pattern(1024, seed: UInt8(truncatingIfNeeded: sent / 1024))
            try harness.send(harness.header(VsockOp.readWrite, guestPort: 5, hostPort: 6, length: 1024), payload: chunk)
            sent += 1024
            data += chunk
            #expect(sent < 1 << 24, "the device never ran out of credit")
            if sent >= 1 << 24 { return }
        }
        #expect(harness.device.connectionCount == 1)
        #expect(try harness.receive().allSatisfy { $0.operation != VsockOp.reset })

        // The host drains its socket; the device forwards what it held and tells the guest.
        var delivered: [UInt8] = []
        var updates = 0
        for _ in 0..<200 where delivered.count < data.count {
            if let bytes = VsockHostSocket.read(host, count: data.count - delivered.count, milliseconds: 20) { delivered += bytes }
            harness.pump()
            updates += try harness.receive().filter { $0.operation == VsockOp.creditUpdate }.count
        }
        #expect(delivered == data)
        #expect(updates >= 1)

        // Beyond the credit: a packet larger than the whole buffer resets the connection.
        let big = [UInt8](repeating: 7, count: Int(bufferSize) + 1)
        try harness.send(harness.header(VsockOp.readWrite, guestPort: 5, hostPort: 6, length: big.count), payload: big)
        #expect(try harness.receive().map(\.operation) == [VsockOp.reset])
        #expect(VsockHostSocket.isClosed(host))
        #expect(!harness.interrupt.needsReset)
    }
}

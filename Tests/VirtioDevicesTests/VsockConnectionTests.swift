import Glibc
import GuestMemory
import Testing
import Virtio
import VirtioDevices

typealias VsockOp = VsockHeader.Operation

/// Whole connections, both directions, over real Unix sockets.
@Suite(.timeLimit(.minutes(1))) struct VsockConnectionTests {
    @Test func identityAndConfiguration() throws {
        let harness = try VsockHarness(activate: false)
        #expect(harness.device.deviceType == .vsock)
        #expect(harness.device.queueCount == 3)
        #expect(harness.device.features == VirtioFeatures(bits: [32, 29, 28, 0]))
        #expect(harness.device.configurationSize == 8)
        var bytes = [UInt8](repeating: 0xAA, count: 10)
        bytes.withUnsafeMutableBytes { harness.device.readConfiguration(offset: 0, into: $0) }
        #expect(bytes == [3, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        // The listener is watched from the first activation on, with token 0.
        #expect(harness.watcher.descriptors.isEmpty)
        var active = harness
        try active.activate()
        #expect(Array(active.watcher.descriptors.values) == [0])
    }

    @Test func guestInitiatedConnection() throws {
        var harness = try VsockHarness()
        let service = VsockHostSocket.listen(harness.socketPath + "_1234")
        defer { close(service) }
        try harness.postReceiveBuffers()

        try harness.send(harness.header(VsockOp.request, guestPort: 5000, hostPort: 1234))
        var packets = try harness.receive()
        #expect(packets.count == 1)
        #expect(packets[0].operation == VsockOp.response)
        #expect(packets[0].header.sourceCID == 2 && packets[0].header.destinationCID == 3)
        #expect(packets[0].header.sourcePort == 1234 && packets[0].header.destinationPort == 5000)
        #expect(packets[0].header.bufferAllocation == 64 * 1024)
        let host = VsockHostSocket.accept(service)
        #expect(host >= 0)
        defer { close(host) }

        let hello = Array("hello from the guest\n".utf8)
        try harness.send(harness.header(VsockOp.readWrite, guestPort: 5000, hostPort: 1234, length: hello.count), payload: hello)
        #expect(VsockHostSocket.read(host, count: hello.count) == hello)

        VsockHostSocket.write(host, "hello from the host\n")
        packets = try harness.pumpUntilPackets()
        #expect(packets.count == 1)
        #expect(packets[0].operation == VsockOp.readWrite)
        #expect(packets[0].text == "hello from the host\n")
        #expect(packets[0].header.length == 20)
        // The device reports what it forwarded.
        #expect(packets[0].header.forwardCount == UInt32(hello.count))

        // The guest closes: SHUTDOWN both ways, answered with RST, and the host sees end of stream.
        try harness.send(harness.header(VsockOp.shutdown, guestPort: 5000, hostPort: 1234, flags: 3))
        packets = try harness.receive()
        #expect(packets.map(\.operation) == [VsockOp.reset])
        #expect(VsockHostSocket.isClosed(host))
        #expect(harness.device.connectionCount == 0)
        #expect(harness.watcher.descriptors.count == 1)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func guestHalfCloseThenHostAnswers() throws {
        var harness = try VsockHarness()
        let service = VsockHostSocket.listen(harness.socketPath + "_80")
        defer { close(service) }
        try harness.postReceiveBuffers()
        try harness.send(harness.header(VsockOp.request, guestPort: 7, hostPort: 80))
        #expect(try harness.receive().map(\.operation) == [VsockOp.response])
        let host = VsockHostSocket.accept(service)
        defer { close(host) }
        try harness.send(harness.header(VsockOp.readWrite, guestPort: 7, hostPort: 80, length: 4), payload: Array("GET\n".utf8))
        // The guest will send nothing more: the host reads end of stream after the request.
        try harness.send(harness.header(VsockOp.shutdown, guestPort: 7, hostPort: 80, flags: VsockHeader.ShutdownFlag.send))
        #expect(VsockHostSocket.read(host) == Array("GET\n".utf8))
        #expect(VsockHostSocket.read(host, milliseconds: 200) == nil)
        // The host answers and closes; the guest gets the data, then SHUTDOWN(SEND).
        VsockHostSocket.write(host, "OK\n")
        shutdown(host, Int32(SHUT_WR))
        var packets: [VsockReceivedPacket] = []
        for _ in 0..<5 { packets += try harness.pumpUntilPackets(attempts: 5) }
        #expect(packets.map(\.operation) == [VsockOp.readWrite, VsockOp.shutdown])
        #expect(packets.first?.text == "OK\n")
        #expect(packets.last?.header.flags == VsockHeader.ShutdownFlag.send)
        try harness.send(harness.header(VsockOp.reset, guestPort: 7, hostPort: 80))
        #expect(harness.device.connectionCount == 0)
        #expect(try harness.receive().isEmpty)
    }

    @Test func guestConnectionToNobodyIsRefused() throws {
        var harness = try VsockHarness()
        try harness.postReceiveBuffers()
        try harness.send(harness.header(VsockOp.request, guestPort: 5000, hostPort: 9999))
        let packets = try harness.receive()
        #expect(packets.map(\.operation) == [VsockOp.reset])
        #expect(packets[0].header.sourcePort == 9999 && packets[0].header.destinationPort == 5000)
        #expect(harness.device.connectionCount == 0)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func hostInitiatedConnection() throws {
        var harness = try VsockHarness()
        try harness.postReceiveBuffers()
        let host = VsockHostSocket.connect(harness.socketPath)
        #expect(host >= 0)
        defer { close(host) }
        // The request and the first data in one write: the data must stay in the stream.
        VsockHostSocket.write(host, "CONNECT 52\nearly")
        var packets = try harness.pumpUntilPackets()
        #expect(packets.count == 1)
        let request = try #require(packets.first)
        #expect(request.operation == VsockOp.request)
        #expect(request.header.destinationPort == 52 && request.header.destinationCID == 3)
        #expect(request.header.sourcePort == Vsock.firstLocalPort && request.header.sourceCID == 2)

        try harness.send(harness.header(VsockOp.response, guestPort: 52, hostPort: Vsock.firstLocalPort))
        #expect(VsockHostSocket.read(host, count: 14) == Array("OK 1073741824\n".utf8))
        packets = try harness.pumpUntilPackets()
        #expect(packets.map(\.text) == ["early"])

        try harness.send(
            harness.header(VsockOp.readWrite, guestPort: 52, hostPort: Vsock.firstLocalPort, length: 5), payload: Array("reply".utf8))
        #expect(VsockHostSocket.read(host, count: 5) == Array("reply".utf8))

        // The host closes: the guest hears SHUTDOWN(SEND), closes its end with RST, and the slot is free.
        close(host)
        packets = try harness.pumpUntilPackets()
        #expect(packets.map(\.operation) == [VsockOp.shutdown])
        try harness.send(harness.header(VsockOp.reset, guestPort: 52, hostPort: Vsock.firstLocalPort))
        #expect(harness.device.connectionCount == 0)
        #expect(harness.watcher.descriptors.count == 1)
    }

    @Test func hostConnectionRefusedByGuest() throws {
        var harness = try VsockHarness()
        try harness.postReceiveBuffers()
        let host = VsockHostSocket.connect(harness.socketPath)
        defer { close(host) }
        VsockHostSocket.write(host, "CONNECT 7\n")
        let packets = try harness.pumpUntilPackets()
        #expect(packets.map(\.operation) == [VsockOp.request])
        try harness.send(harness.header(VsockOp.reset, guestPort: 7, hostPort: Vsock.firstLocalPort))
        #expect(VsockHostSocket.isClosed(host))
        #expect(harness.device.connectionCount == 0)
    }

    @Test func malformedConnectRequestIsClosed() throws {
        var harness = try VsockHarness()
        try harness.postReceiveBuffers()
        for line in ["HELLO 5\n", "CONNECT \n", "CONNECT 4294967296\n", "CONNECT 5x\n", String(repeating: "C", count: 40)] {
            let host = VsockHostSocket.connect(harness.socketPath)
            VsockHostSocket.write(host, line)
            harness.pump()
            #expect(VsockHostSocket.isClosed(host), "\(line) was not refused")
            close(host)
        }
        // A host that leaves mid-request is dropped too.
        let host = VsockHostSocket.connect(harness.socketPath)
        VsockHostSocket.write(host, "CONN")
        harness.pump()
        #expect(harness.device.connectionCount == 1)
        close(host)
        harness.pump()
        #expect(harness.device.connectionCount == 0)
        #expect(try harness.receive().isEmpty)
    }

    /// Host clients that connect and never say CONNECT take at most `maximumUnannouncedConnections` slots: the
    /// guest can still connect out.
    @Test func silentHostClientsCannotFillTheTable() throws {
        var harness = try VsockHarness(maximumConnections: 32)
        let service = VsockHostSocket.listen(harness.socketPath + "_1")
        defer { close(service) }
        try harness.postReceiveBuffers()
        let silent = (0..<24).map { _ in VsockHostSocket.connect(harness.socketPath) }
        defer { for host in silent { close(host) } }
        for _ in 0..<50 where harness.device.connectionCount < Vsock.maximumUnannouncedConnections {
            harness.pump()
            usleep(2000)
        }
        harness.pump()
        #expect(harness.device.connectionCount == Vsock.maximumUnannouncedConnections)
        // Accepted in the order they connected: the ones past the cap were closed at once.
        #expect(silent.suffix(24 - Vsock.maximumUnannouncedConnections).allSatisfy { VsockHostSocket.isClosed($0) })
        try harness.send(harness.header(VsockOp.request, guestPort: 7, hostPort: 1))
        #expect(try harness.receive().map(\.operation) == [VsockOp.response])
    }

    @Test func hostConnectionsWaitForActivation() throws {
        var harness = try VsockHarness(activate: false)
        let host = VsockHostSocket.connect(harness.socketPath)
        defer { close(host) }
        VsockHostSocket.write(host, "CONNECT 9\n")
        harness.pump()
        #expect(harness.device.connectionCount == 0)
        try harness.activate()
        try harness.postReceiveBuffers()
        let packets = try harness.receive()
        #expect(packets.map(\.operation) == [VsockOp.request])
        #expect(packets.first?.header.destinationPort == 9)
    }

    @Test func resetClosesEveryConnectionAndReactivationSendsTransportReset() throws {
        var harness = try VsockHarness()
        let service = VsockHostSocket.listen(harness.socketPath + "_1")
        defer { close(service) }
        try harness.postReceiveBuffers()
        // The first activation owes no event.
        try harness.postEventBuffer()
        #expect(try harness.used(2).isEmpty)
        try harness.send(harness.header(VsockOp.request, guestPort: 10, hostPort: 1))
        let guestSide = VsockHostSocket.accept(service)
        defer { close(guestSide) }
        let hostSide = VsockHostSocket.connect(harness.socketPath)
        defer { close(hostSide) }
        VsockHostSocket.write(hostSide, "CONNECT 11\n")
        harness.pump()
        #expect(harness.device.connectionCount == 2)

        harness.device.reset()
        #expect(harness.device.connectionCount == 0)
        #expect(VsockHostSocket.isClosed(guestSide))
        #expect(VsockHostSocket.isClosed(hostSide))
        #expect(harness.watcher.descriptors.count == 1)

        try harness.activate()
        try harness.postEventBuffer()
        let events = try harness.used(2)
        #expect(events.count == 1 && events.first?.length == 4)
        #expect(try harness.memory.load(UInt32.self, at: VsockHarness.eventAddress) == Vsock.transportResetEvent)
        // Only once.
        try harness.postEventBuffer()
        #expect(try harness.used(2).isEmpty)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func transportResetOnRequest() throws {
        var harness = try VsockHarness()
        let service = VsockHostSocket.listen(harness.socketPath + "_1")
        defer { close(service) }
        try harness.postReceiveBuffers()
        try harness.send(harness.header(VsockOp.request, guestPort: 10, hostPort: 1))
        let guestSide = VsockHostSocket.accept(service)
        defer { close(guestSide) }
        try harness.postEventBuffer()
        harness.device.resetTransport()
        #expect(VsockHostSocket.isClosed(guestSide))
        #expect(try harness.used(2).count == 1)
        #expect(harness.device.connectionCount == 0)
    }

    @Test func connectionLimit() throws {
        var harness = try VsockHarness(maximumConnections: 2)
        let service = VsockHostSocket.listen(harness.socketPath + "_1")
        defer { close(service) }
        try harness.postReceiveBuffers()
        for port in UInt32(1)...3 { try harness.send(harness.header(VsockOp.request, guestPort: port, hostPort: 1)) }
        let packets = try harness.receive()
        #expect(packets.map(\.operation) == [VsockOp.response, VsockOp.response, VsockOp.reset])
        #expect(packets.last?.header.destinationPort == 3)
        // Host connections beyond the limit are closed at once (pumped until the device has seen the listener).
        let host = VsockHostSocket.connect(harness.socketPath)
        defer { close(host) }
        var closed = false
        for _ in 0..<50 where !closed {
            harness.pump()
            closed = VsockHostSocket.wait(host, for: POLLIN, milliseconds: 20) && VsockHostSocket.isClosed(host)
        }
        #expect(closed)
        #expect(harness.device.connectionCount == 2)
    }
}

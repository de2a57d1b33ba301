import Glibc
@testable import NetBackends
import Testing
import VirtioDevices

@Suite(.timeLimit(.minutes(1))) struct SlirpBackendTests {
    static let guest: UInt32 = 0x0A00_020F
    static let gateway: UInt32 = 0x0A00_0202

    /// Sends `frame` (when given), then returns the first frame from the backend that `match` accepts, waiting
    /// up to five seconds; frames it does not accept (router advertisements, say) are skipped.
    func exchange<T>(_ backend: SlirpBackend, _ frame: [UInt8]?, _ match: ([UInt8]) -> T?) throws -> T? {
        if let frame { try send(frame, to: backend) }
        var buffer = [UInt8](repeating: 0, count: 2048)
        for _ in 0..<50 {
            while let count = buffer.withUnsafeMutableBytes({ backend.receive(into: $0) }) {
                if let found = match(Array(buffer[0..<count])) { return found }
            }
            _ = waitReadable(backend.descriptor, milliseconds: 100)
        }
        return nil
    }

    @Test func answersARPForTheGateway() throws {
        let backend = try SlirpBackend()
        #expect(backend.offloads.isEmpty)
        try send(Packet.arpRequest(sender: Self.guest, target: Self.gateway), to: backend)
        // The reply is queued and the descriptor says so.
        #expect(waitReadable(backend.descriptor, milliseconds: 5000))
        let reply = try exchange(backend, nil) { Packet.arpReply($0, to: Self.guest) }
        #expect(reply?.address == Self.gateway)
        #expect(reply?.mac == [0x52, 0x55, 0x0A, 0x00, 0x02, 0x02])
        // Drained: nothing waits, and the descriptor is quiet.
        var buffer = [UInt8](repeating: 0, count: 2048)
        while buffer.withUnsafeMutableBytes({ backend.receive(into: $0) }) != nil {}
        #expect(!waitReadable(backend.descriptor, milliseconds: 0))
    }

    @Test func answersPingsToTheGateway() throws {
        let backend = try SlirpBackend(ipv6: false)
        let gatewayMAC = try #require(
            try exchange(backend, Packet.arpRequest(sender: Self.guest, target: Self.gateway)) {
                Packet.arpReply($0, to: Self.guest)?.mac
            })
        let data = Array("tern ping".utf8)
        let request = Packet.echoRequest(from: Self.guest, to: Self.gateway, gatewayMAC: gatewayMAC, data: data)
        let reply = try #require(try exchange(backend, request) { Packet.icmp($0, from: Self.gateway) })
        #expect(reply.first == 0)  // echo reply
        #expect(Array(reply.dropFirst(4).prefix(4)) == [0x12, 0x34, 0, 1])
        #expect(Array(reply.dropFirst(8)) == data)
        #expect(Packet.checksum(reply) == 0)
    }

    @Test func forwardsUDPFromTheHost() throws {
        let port = freePort(type: Int32(SOCK_DGRAM.rawValue))
        let backend = try SlirpBackend(forwards: [HostForward(transport: .udp, hostPort: port, guestPort: 7)])
        // The guest makes itself known, as DHCP or ARP would.
        _ = try exchange(backend, Packet.arpRequest(sender: Self.guest, target: Self.gateway)) {
            Packet.arpReply($0, to: Self.guest)
        }
        let host = LoopbackUDP()
        let message = Array("through slirp".utf8)
        #expect(host.send(message, port: port) == message.count)
        let (frame, datagram) = try #require(
            try exchange(backend, nil) { frame in
                Packet.udp(frame).flatMap { $0.destination == Self.guest && $0.port == 7 ? (frame, $0) : nil }
            })
        #expect(datagram.data == message)
        #expect(Array(frame[0..<6]) == Packet.guestMAC)
        let reply = Packet.udp(
            from: (Self.guest, 7), to: (datagram.source, datagram.sourcePort),
            macs: (Array(frame[6..<12]), Packet.guestMAC), data: Array(datagram.data.reversed()))
        try send(reply, to: backend)
        #expect(host.receive() == Array(message.reversed()))
    }

    @Test func busyHostPortIsAClearError() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = LoopbackUDP.loopback(port: 0)
        address.sin_addr = in_addr(s_addr: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                _ = bind(listener, $0, length)
                _ = getsockname(listener, $0, &length)
            }
        }
        #expect(listen(listener, 1) == 0)
        let port = UInt16(bigEndian: address.sin_port)
        #expect(throws: SlirpError("hostfwd tcp::\(port)-:22: cannot listen on host port \(port) (Address already in use); pick a free port")) {
            try SlirpBackend(forwards: [HostForward(transport: .tcp, hostPort: port, guestPort: 22)])
        }
    }

    @Test func frameQueueIsBoundedAndCountsDrops() {
        func push(_ bytes: [UInt8], _ queue: inout FrameQueue) -> Bool { bytes.withUnsafeBytes { queue.push($0) } }
        func pop(_ count: Int, _ queue: inout FrameQueue) -> [UInt8]? {
            var buffer = [UInt8](repeating: 0, count: count)
            return buffer.withUnsafeMutableBytes { queue.pop(into: $0) }.map { Array(buffer[0..<$0]) }
        }
        var queue = FrameQueue(capacity: 2, slotSize: 4)
        #expect(push([1, 2, 3], &queue))
        #expect(!push([4, 5, 6, 7], &queue))
        #expect(!push([8], &queue))
        #expect(queue.count == 2 && queue.drops == 1)
        var oversized = FrameQueue(capacity: 2, slotSize: 4)
        #expect(push([1, 2, 3, 4, 5], &oversized))
        #expect(oversized.count == 0 && oversized.drops == 1)
        // A short buffer truncates.
        #expect(pop(2, &queue) == [1, 2])
        #expect(pop(8, &queue) == [4, 5, 6, 7])
        #expect(pop(8, &queue) == nil)
        // Slots are reused around the ring.
        #expect(push([9], &queue) && !push([10], &queue) && !push([11], &queue))
        #expect(pop(8, &queue) == [9] && pop(8, &queue) == [10] && queue.drops == 2)
    }
}

import Glibc
import NetBackends
import Testing
import VirtioDevices

/// Whether this process can create tap interfaces: it needs /dev/net/tun and CAP_NET_ADMIN (root, usually).
private let canCreateTap: Bool = (try? TapBackend(name: "terntprobe\(getpid() % 10000)")) != nil
/// Whether iproute2's `ip` is there to give a tap an address.
private let hasIPCommand = system("ip -V >/dev/null 2>&1") == 0

@Suite(.enabled(if: canCreateTap, "needs /dev/net/tun and CAP_NET_ADMIN (run as root) to create tap interfaces"), .timeLimit(.minutes(1)))
struct TapBackendTests {
    @Test(.enabled(if: hasIPCommand, "needs iproute2's ip to give the tap an address"))
    func exchangesFramesWithTheHostKernel() throws {
        let name = "ternt\(getpid() % 100000)"
        let tap = try TapBackend(name: name)
        #expect(tap.name == name)
        #expect(tap.offloads == [.checksum, .tcp4Segmentation, .tcp6Segmentation])
        tap.setReceiveOffloads([.checksum, .tcp4Segmentation])
        let host: UInt32 = 0x0AD5_0701  // 10.213.7.1
        let guest: UInt32 = 0x0AD5_0702
        #expect(system("ip addr add 10.213.7.1/24 dev \(name) && ip link set \(name) up") == 0)
        var buffer = [UInt8](repeating: 0, count: 12 + Net.maximumFrameLength)
        // The guest asks for the host's address, behind a virtio-net header.
        let request = [UInt8](repeating: 0, count: 12) + Packet.arpRequest(sender: guest, target: host)
        try send(request, to: tap)
        var reply: (mac: [UInt8], address: UInt32)?
        for _ in 0..<50 where reply == nil {
            _ = waitReadable(tap.descriptor, milliseconds: 100)
            while reply == nil, let count = buffer.withUnsafeMutableBytes({ tap.receive(into: $0) }) {
                // The kernel also sends its own IPv6 chatter; every frame carries the 12-byte header.
                #expect(count >= 12 + 14)
                reply = Packet.arpReply(Array(buffer[12..<count]), to: guest)
            }
        }
        #expect(reply?.address == host)
    }

    @Test func refusesASecondAttachment() throws {
        let name = "terns\(getpid() % 100000)"
        let first = try TapBackend(name: name)
        #expect(throws: TapError("tap \(name) is attached to another process; each tap serves one VM")) {
            try TapBackend(name: name)
        }
        #expect(first.descriptor >= 0)
    }
}

@Test func tapRefusesBadNames() {
    #expect(throws: TapError("tap name 'a/b' must be 1 to 15 characters without '/', ':' or whitespace")) {
        try TapBackend(name: "a/b")
    }
    #expect(throws: TapError.self) { try TapBackend(name: "sixteen-chars-xx") }
    #expect(throws: TapError.self) { try TapBackend(name: "tap 0") }
}

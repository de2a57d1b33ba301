import Foundation
import Glibc
import Synchronization
import Testing
import VMM

/// The `net` test guest drives virtio-net over both transports: through libslirp's user-mode NAT (ARP and ping to
/// the gateway, UDP echoes of datagrams a host forward delivers), and through a tap interface on the host kernel.
@Suite(.serialized, .timeLimit(.minutes(3))) struct VirtioNetGuestTests {
    @Test(arguments: VirtioTransportKind.allCases) func userNetworkAnswersARPAndPing(transport: VirtioTransportKind) throws {
        let run = try boot(try VMConfig(kernel: Repository.guest("net"), virtioTransport: transport, nets: [NetSetting.parse("user")]))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        #expect(run.output.contains("net: 10.0.2.2 is at 52:55:0a:00:02:02"))
        #expect(run.output.contains("net: ok: ARP and ping to 10.0.2.2"))
    }

    /// Datagrams sent to a forwarded host port reach the guest, which echoes them; the host checks each echo.
    @Test(arguments: VirtioTransportKind.allCases) func hostForwardReachesTheGuest(transport: VirtioTransportKind) throws {
        let port = UInt16(20_000 + getpid() % 20_000 + (transport == .pci ? 0 : 1))
        let console = CapturedOutput()
        let config = try VMConfig(kernel: Repository.guest("net"), cmdline: "mode=udp-echo count=3",
                              virtioTransport: transport, nets: [NetSetting.parse("user,hostfwd=udp::\(port)-:7")])
        let machine = try Machine(config: config, console: console)
        let replies = Mutex<[String]>([])
        // A real thread, not a task: the VM blocks this test's thread.
        let client = Thread {
            for _ in 0..<1000 where !console.text.contains("net: ready") { usleep(10_000) }
            let socket = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            defer { close(socket) }
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            for index in 0..<3 {
                let message = Array("datagram \(index) from the host".utf8)
                _ = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(socket, message, message.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
                var buffer = [UInt8](repeating: 0, count: 256)
                let count = recv(socket, &buffer, buffer.count, 0)
                replies.withLock { $0.append(count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : "") }
            }
        }
        client.start()
        let outcome = machine.run()
        #expect(outcome == .guestExit(0), "output: \(console.text)")
        #expect(replies.withLock { $0 } == (0..<3).map { "datagram \($0) from the host" })
        #expect(console.text.contains("net: ok: ARP, ping and 3 UDP echo(es) on port 7"))
    }

    /// A tap prepared the way a bridged host has it (a persistent interface with the gateway's address): the guest's
    /// ARP and ping are answered by the host kernel itself. The subnet is one no host is likely to use already.
    @Test(.enabled(if: TapFixture.available, "needs root, /dev/net/tun and iproute2 to create a tap interface"),
          arguments: VirtioTransportKind.allCases)
    func tapReachesTheHostKernel(transport: VirtioTransportKind) throws {
        // A subnet per case: two taps on one subnet could route one guest's ping reply out of the other tap.
        let tap = try TapFixture(name: "ternv\(getpid() % 10000)\(transport == .pci ? "p" : "m")", subnet: transport == .pci ? 9 : 10)
        defer { tap.remove() }
        let run = try boot(VMConfig(kernel: Repository.guest("net"), cmdline: "ip=\(tap.guest) gw=\(tap.host)",
                                    virtioTransport: transport, nets: [NetSetting.parse("tap=\(tap.name)")]))
        #expect(run.outcome == .guestExit(0), "output: \(run.output)")
        #expect(run.output.contains("net: ok: ARP and ping to \(tap.host)"))
    }
}

/// A persistent tap interface with the address `host`/24 (10.213.`subnet`.1; the tap unit tests use 10.213.7.0/24),
/// removed by `remove()`.
struct TapFixture {
    let name: String
    let host: String
    let guest: String

    static let available: Bool = getuid() == 0 && access("/dev/net/tun", R_OK | W_OK) == 0
        && system("ip tuntap add ternprobe\(getpid() % 10000) mode tap >/dev/null 2>&1 && ip link del ternprobe\(getpid() % 10000) >/dev/null 2>&1") == 0

    init(name: String, subnet: Int) throws {
        self.name = name
        host = "10.213.\(subnet).1"
        guest = "10.213.\(subnet).2"
        try #require(system("ip tuntap add \(name) mode tap && ip addr add \(host)/24 dev \(name) && ip link set \(name) up") == 0,
                     "cannot set up tap \(name)")
    }

    func remove() {
        _ = system("ip link del \(name) >/dev/null 2>&1")
    }
}

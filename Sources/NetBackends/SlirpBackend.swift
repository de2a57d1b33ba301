import CSlirp
import Glibc
import VirtioDevices

/// User-mode networking through libslirp: the guest sits behind NAT on its own network, with no privileges or
/// host set-up needed. The network is 10.0.2.0/24 with the gateway (the host) at 10.0.2.2, DNS at 10.0.2.3 and
/// DHCP handing out 10.0.2.15 first; IPv6 uses fec0::/64 (gateway fec0::2, DNS fec0::3) when enabled. Guest
/// connections leave through host sockets; `HostForward`s open host ports into the guest.
///
/// A thread of its own polls libslirp's sockets and runs its timers. Frames libslirp emits wait in a bounded
/// queue (`frameCapacity` frames) until the device takes them; when it is full they are dropped and counted,
/// and TCP retransmits. `send(_:)` hands a frame to libslirp at once and never blocks for long: libslirp only
/// does non-blocking socket calls under its lock. No offloads: frames carry no virtio-net header.
public final class SlirpBackend: NetBackend {
    /// The guest network.
    public static let network = IPv4Address(0x0A00_0200)
    /// The network mask, /24.
    public static let netmask = IPv4Address(0xFFFF_FF00)
    /// The gateway, which is also the host's loopback as seen from the guest.
    public static let gateway = IPv4Address(0x0A00_0202)
    /// The DNS server libslirp answers on.
    public static let nameServer = IPv4Address(0x0A00_0203)
    /// The first address DHCP hands out, and the default guest address of host forwards.
    public static let guestAddress = IPv4Address(0x0A00_020F)
    /// The MTU libslirp uses towards the guest.
    public static let mtu = 1500
    /// Frames the queue towards the guest holds.
    public static let frameCapacity = 256

    private let stack: SlirpStack
    private let thread: pthread_t

    /// Starts a user-mode network with `forwards` open from the host, IPv6 when `ipv6`; `log` receives the
    /// first few complaints libslirp has about the guest's packets.
    public init(
        forwards: [HostForward] = [], ipv6: Bool = true, log: (@Sendable (String) -> Void)? = nil
    ) throws(SlirpError) {
        // An Ethernet header around an MTU-sized packet, rounded up.
        stack = try SlirpStack(frameCapacity: Self.frameCapacity, frameSize: 1536, log: log)
        var config = SlirpConfig()
        config.version = 4
        config.restricted = 0
        config.in_enabled = true
        config.vnetwork = Self.address(Self.network)
        config.vnetmask = Self.address(Self.netmask)
        config.vhost = Self.address(Self.gateway)
        config.vdhcp_start = Self.address(Self.guestAddress)
        config.vnameserver = Self.address(Self.nameServer)
        config.in6_enabled = ipv6
        if ipv6 {
            config.vprefix_addr6 = Self.address6("fec0::")
            config.vprefix_len = 64
            config.vhost6 = Self.address6("fec0::2")
            config.vnameserver6 = Self.address6("fec0::3")
        }
        config.if_mtu = Self.mtu
        config.if_mru = Self.mtu
        do {
            try stack.start(config: &config, forwards: forwards, guestAddress: Self.guestAddress)
        } catch {
            stack.shutDown()
            throw error
        }
        let retained = Unmanaged.passRetained(stack).toOpaque()
        var thread = pthread_t()
        let created = pthread_create(&thread, nil, { argument in
            let stack = Unmanaged<SlirpStack>.fromOpaque(argument!).takeRetainedValue()
            stack.run()
            return nil
        }, retained)
        guard created == 0 else {
            Unmanaged<SlirpStack>.fromOpaque(retained).release()
            stack.shutDown()
            throw SlirpError("user network: cannot start its thread: \(String(cString: strerror(created)))")
        }
        self.thread = thread
    }

    deinit {
        stack.stop()
        pthread_join(thread, nil)
        stack.shutDown()
    }

    public var offloads: NetOffloads { [] }

    /// Readable while frames wait for the guest.
    public var descriptor: Int32 { stack.ready.descriptor }

    /// Frames for the guest dropped because the device did not take them fast enough.
    public var receiveDrops: UInt64 { stack.drops }

    public func send(_ frame: UnsafeRawBufferPointer) throws(NetBackendError) {
        stack.input(frame)
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        stack.dequeue(into: buffer)
    }

    /// Nothing to set: libslirp takes and gives only complete frames.
    public func setReceiveOffloads(_ offloads: NetOffloads) {}

    private static func address(_ address: IPv4Address) -> in_addr {
        in_addr(s_addr: address.value.bigEndian)
    }

    private static func address6(_ text: String) -> in6_addr {
        var address = in6_addr()
        _ = inet_pton(AF_INET6, text, &address)
        return address
    }
}

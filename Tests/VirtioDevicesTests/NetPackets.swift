import Glibc
import VirtioDevices

/// Builds and reads the few Ethernet, ARP, IPv4, ICMP and UDP frames the backend tests exchange.
enum Packet {
    static let broadcast: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
    static let guestMAC: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]

    static func bytes(_ address: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: address >> (24 - 8 * $0)) } }
    static func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(truncatingIfNeeded: value)] }
    static func be16(_ frame: [UInt8], _ offset: Int) -> UInt16 { UInt16(frame[offset]) << 8 | UInt16(frame[offset + 1]) }
    static func be32(_ frame: [UInt8], _ offset: Int) -> UInt32 {
        frame[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// The ones'-complement checksum of `bytes` (RFC 1071).
    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var sum: UInt32 = 0
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let high = UInt32(bytes[index])
            let low = index + 1 < bytes.endIndex ? UInt32(bytes[index + 1]) : 0
            sum += high << 8 | low
            index += 2
        }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }

    /// An ARP request from `sender` (at `guestMAC`) for `target`.
    static func arpRequest(sender: UInt32, target: UInt32, mac: [UInt8] = guestMAC) -> [UInt8] {
        broadcast + mac + [0x08, 0x06] + [0, 1, 0x08, 0x00, 6, 4, 0, 1] + mac + bytes(sender) + [0, 0, 0, 0, 0, 0]
            + bytes(target)
    }

    /// The sender hardware and protocol address of an ARP reply for `target`, or nil when `frame` is not one.
    static func arpReply(_ frame: [UInt8], to target: UInt32) -> (mac: [UInt8], address: UInt32)? {
        guard frame.count >= 42, be16(frame, 12) == 0x0806, be16(frame, 20) == 2, be32(frame, 38) == target else {
            return nil
        }
        return (Array(frame[22..<28]), be32(frame, 28))
    }

    /// An IPv4 packet in an Ethernet frame, with its header checksum.
    static func ipv4(from source: UInt32, to destination: UInt32, protocol number: UInt8, macs: ([UInt8], [UInt8]), payload: [UInt8])
        -> [UInt8]
    {
        var header: [UInt8] = [0x45, 0] + be16(UInt16(20 + payload.count)) + [0, 1, 0x40, 0, 64, number, 0, 0]
        header += bytes(source) + bytes(destination)
        header.replaceSubrange(10..<12, with: be16(checksum(header[...])))
        return macs.0 + macs.1 + [0x08, 0x00] + header + payload
    }

    /// An ICMP echo request with `identifier`, `sequence` and `data`.
    static func echoRequest(from source: UInt32, to destination: UInt32, gatewayMAC: [UInt8], data: [UInt8]) -> [UInt8] {
        var icmp: [UInt8] = [8, 0, 0, 0, 0x12, 0x34, 0, 1] + data
        icmp.replaceSubrange(2..<4, with: be16(checksum(icmp[...])))
        return ipv4(from: source, to: destination, protocol: 1, macs: (gatewayMAC, guestMAC), payload: icmp)
    }

    /// The ICMP message in an IPv4 frame from `source`, or nil.
    static func icmp(_ frame: [UInt8], from source: UInt32) -> ArraySlice<UInt8>? {
        guard frame.count >= 34, be16(frame, 12) == 0x0800, frame[23] == 1, be32(frame, 26) == source else { return nil }
        let headerLength = Int(frame[14] & 0xF) * 4
        return frame[(14 + headerLength)...]
    }

    /// The fields of a UDP datagram in an IPv4 frame, or nil.
    static func udp(_ frame: [UInt8]) -> (source: UInt32, sourcePort: UInt16, destination: UInt32, port: UInt16, data: [UInt8])? {
        guard frame.count >= 42, be16(frame, 12) == 0x0800, frame[23] == 17 else { return nil }
        let at = 14 + Int(frame[14] & 0xF) * 4
        let length = Int(be16(frame, at + 4))
        guard length >= 8, at + length <= frame.count else { return nil }
        return (be32(frame, 26), be16(frame, at), be32(frame, 30), be16(frame, at + 2), Array(frame[(at + 8)..<(at + length)]))
    }

    /// A UDP datagram (checksum 0, which IPv4 allows).
    static func udp(from source: (UInt32, UInt16), to destination: (UInt32, UInt16), macs: ([UInt8], [UInt8]), data: [UInt8])
        -> [UInt8]
    {
        let datagram = be16(source.1) + be16(destination.1) + be16(UInt16(8 + data.count)) + [0, 0] + data
        return ipv4(from: source.0, to: destination.0, protocol: 17, macs: macs, payload: datagram)
    }
}

/// Waits up to `milliseconds` for `descriptor` to become readable.
func waitReadable(_ descriptor: Int32, milliseconds: Int32) -> Bool {
    var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
    return poll(&entry, 1, milliseconds) == 1
}

/// A UDP socket on 127.0.0.1 with an ephemeral port and a receive timeout.
struct LoopbackUDP: ~Copyable {
    let descriptor: Int32

    init() {
        descriptor = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var address = Self.loopback(port: 0)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(descriptor) }

    static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr = in_addr(s_addr: UInt32(0x7F00_0001).bigEndian)
        return address
    }

    func send(_ bytes: [UInt8], port: UInt16) -> Int {
        var address = Self.loopback(port: port)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(descriptor, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
    }

    /// The next datagram, or nil after the timeout.
    func receive() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 2048)
        let count = recv(descriptor, &buffer, buffer.count, 0)
        return count < 0 ? nil : Array(buffer[0..<count])
    }
}

/// A host port free right now: bound to an ephemeral port, read back and released.
func freePort(type: Int32) -> UInt16 {
    let descriptor = socket(AF_INET, type, 0)
    defer { close(descriptor) }
    var address = LoopbackUDP.loopback(port: 0)
    address.sin_addr = in_addr(s_addr: 0)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            _ = bind(descriptor, $0, length)
            return getsockname(descriptor, $0, &length)
        }
    }
    return UInt16(bigEndian: address.sin_port)
}

/// Hands `frame` to `backend`.
func send(_ frame: [UInt8], to backend: any NetBackend) throws(NetBackendError) {
    var failure: NetBackendError?
    frame.withUnsafeBytes { bytes in
        do throws(NetBackendError) { try backend.send(bytes) } catch { failure = error }
    }
    if let failure { throw failure }
}

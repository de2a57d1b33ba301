/// An IPv4 address.
public struct IPv4Address: Sendable, Hashable, CustomStringConvertible {
    /// The address as a number: 10.0.2.15 is 0x0A00_020F.
    public let value: UInt32

    public init(_ value: UInt32) { self.value = value }

    /// Parses dotted-decimal notation, like `10.0.2.15`; nil when `text` is not that.
    public init?(parsing text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.utf8.count), part.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
                let byte = UInt8(part)
            else { return nil }
            value = value << 8 | UInt32(byte)
        }
        self.value = value
    }

    public var description: String {
        (0..<4).map { String(value >> (24 - 8 * UInt32($0)) & 0xFF) }.joined(separator: ".")
    }
}

/// A port of the host forwarded into a user-mode network, in QEMU's `hostfwd` syntax:
/// `[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`, such as `tcp::2222-:22` or `udp:127.0.0.1:5353-:53`.
public struct HostForward: Sendable, Hashable, CustomStringConvertible {
    /// The transport protocol forwarded.
    public enum Transport: String, Sendable {
        case tcp, udp
    }

    public var transport: Transport
    /// The host address listened on; nil means every address (0.0.0.0).
    public var hostAddress: IPv4Address?
    public var hostPort: UInt16
    /// The guest address forwarded to; nil means the address the guest gets by DHCP.
    public var guestAddress: IPv4Address?
    public var guestPort: UInt16

    public init(
        transport: Transport, hostAddress: IPv4Address? = nil, hostPort: UInt16, guestAddress: IPv4Address? = nil,
        guestPort: UInt16
    ) {
        self.transport = transport
        self.hostAddress = hostAddress
        self.hostPort = hostPort
        self.guestAddress = guestAddress
        self.guestPort = guestPort
    }

    /// Parses QEMU's syntax; an empty protocol means tcp, empty addresses take the defaults.
    public init(parsing text: String) throws(HostForwardError) {
        func problem(_ what: String) -> HostForwardError {
            HostForwardError(
                "hostfwd '\(text)': \(what); write [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport, like tcp::2222-:22")
        }
        let sides = text.split(separator: "-", omittingEmptySubsequences: false)
        guard sides.count == 2 else { throw problem("expected one '-' between the host and the guest side") }
        let host = sides[0].split(separator: ":", omittingEmptySubsequences: false)
        let guest = sides[1].split(separator: ":", omittingEmptySubsequences: false)
        guard host.count == 3 else { throw problem("the host side '\(sides[0])' is not protocol:address:port") }
        guard guest.count == 2 else { throw problem("the guest side '\(sides[1])' is not address:port") }
        switch host[0] {
        case "", "tcp": transport = .tcp
        case "udp": transport = .udp
        default: throw problem("protocol '\(host[0])' is not tcp or udp")
        }
        func address(_ field: Substring, _ side: String) throws(HostForwardError) -> IPv4Address? {
            if field.isEmpty { return nil }
            guard let address = IPv4Address(parsing: field) else {
                throw problem("\(side) address '\(field)' is not an IPv4 address")
            }
            return address
        }
        func port(_ field: Substring, _ side: String) throws(HostForwardError) -> UInt16 {
            guard field.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let port = UInt16(field), port != 0 else {
                throw problem("\(side) port '\(field)' is not a number from 1 to 65535")
            }
            return port
        }
        hostAddress = try address(host[1], "host")
        hostPort = try port(host[2], "host")
        guestAddress = try address(guest[0], "guest")
        guestPort = try port(guest[1], "guest")
    }

    /// The forward in QEMU's syntax, with empty fields for default addresses.
    public var description: String {
        "\(transport.rawValue):\(hostAddress?.description ?? ""):\(hostPort)-\(guestAddress?.description ?? ""):\(guestPort)"
    }
}

/// Why a host forward could not be parsed; the description names the problem and the syntax.
public struct HostForwardError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) { self.description = description }
}

import NetBackends
import VirtioDevices

/// A network device given to the guest as virtio-net: `tap=NAME[,mac=MAC]` for a host tap interface, or
/// `user[,hostfwd=RULE]...[,mac=MAC]` for user-mode NAT through libslirp, where RULE is QEMU's
/// `[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`. In JSON configuration it is the same string.
public struct NetSetting: Equatable, Sendable, Codable, CustomStringConvertible {
    /// Where the device's frames go.
    public enum Backend: Equatable, Sendable {
        /// The host's tap interface with this name.
        case tap(String)
        /// User-mode NAT (10.0.2.0/24, guest 10.0.2.15 by DHCP) with these host ports forwarded into the guest.
        case user(forwards: [HostForward])
    }

    public var backend: Backend
    /// The address the guest sees; nil means `macAddress(index:)` derives one.
    public var mac: MACAddress?

    public init(backend: Backend, mac: MACAddress? = nil) {
        self.backend = backend
        self.mac = mac
    }

    /// Parses a `--net` value; errors are one line naming the problem and the fix.
    public static func parse(_ spec: String) throws(ConfigError) -> NetSetting {
        func problem(_ what: String) -> ConfigError { ConfigError("net '\(spec)': \(what)") }
        let usage = "write tap=NAME[,mac=MAC] or user[,hostfwd=tcp::2222-:22][,mac=MAC]"
        var fields = spec.split(separator: ",", omittingEmptySubsequences: false)[...]
        let kind = fields.popFirst() ?? ""
        var forwards: [HostForward] = []
        var tap: String?
        if kind.hasPrefix("tap=") {
            let name = String(kind.dropFirst(4))
            guard TapBackend.isValidName(name) else {
                throw problem(
                    "tap name '\(name)' must be 1 to \(TapBackend.maximumNameLength) characters without '/', ':' or whitespace")
            }
            tap = name
        } else if kind == "tap" {
            throw problem("tap needs the interface name; write tap=NAME")
        } else if kind != "user" {
            throw problem("'\(kind)' is not a network backend; \(usage)")
        }
        var mac: MACAddress?
        for field in fields {
            let parts = field.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[1].isEmpty else { throw problem("'\(field)' is not key=value; \(usage)") }
            let value = String(parts[1])
            switch parts[0] {
            case "mac":
                guard mac == nil else { throw problem("mac is given twice") }
                do { mac = try MACAddress(parsing: value) } catch { throw problem("mac: \(error)") }
            case "hostfwd":
                guard tap == nil else { throw problem("hostfwd applies to user networking only; a tap has no NAT") }
                let forward: HostForward
                do { forward = try HostForward(parsing: value) } catch { throw problem(error.description) }
                if let clash = forwards.first(where: {
                    $0.transport == forward.transport && $0.hostPort == forward.hostPort
                        && ($0.hostAddress == nil || forward.hostAddress == nil || $0.hostAddress == forward.hostAddress)
                }) {
                    throw problem("hostfwd \(forward) and \(clash) listen on the same host port; pick another one")
                }
                forwards.append(forward)
            default:
                throw problem("unknown option '\(parts[0])'; use mac, or hostfwd with user")
            }
        }
        return NetSetting(backend: tap.map { .tap($0) } ?? .user(forwards: forwards), mac: mac)
    }

    /// The guest's MAC address: `mac` when given, else a locally administered 52:54:00:xx:xx:xx whose low three
    /// bytes are the FNV-1a hash of `tap:NAME` or, for user networking, of `user:INDEX` (the device's position
    /// among the `--net` options). The same configuration gets the same address on every run.
    public func macAddress(index: Int) -> MACAddress {
        if let mac { return mac }
        let key: String
        switch backend {
        case .tap(let name): key = "tap:\(name)"
        case .user: key = "user:\(index)"
        }
        var hash: UInt32 = 0x811C_9DC5
        for byte in key.utf8 { hash = (hash ^ UInt32(byte)) &* 0x0100_0193 }
        return MACAddress.locallyAdministered(suffix: hash)
    }

    public init(from decoder: any Decoder) throws {
        self = try NetSetting.parse(decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    /// The setting as `parse` reads it.
    public var description: String {
        var text: String
        switch backend {
        case .tap(let name): text = "tap=\(name)"
        case .user(let forwards): text = (["user"] + forwards.map { "hostfwd=\($0)" }).joined(separator: ",")
        }
        if let mac { text += ",mac=\(mac)" }
        return text
    }
}

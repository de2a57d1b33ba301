import VirtioDevices

/// A virtio-vsock device with Firecracker's Unix socket scheme: `cid=N,uds=PATH`. The guest gets context ID N;
/// host programs reach guest port P by connecting to PATH and writing `CONNECT P\n`, and guest connections to host
/// port P go to a program listening on `PATH_P`. In JSON configuration it is the same string.
public struct VsockSetting: Equatable, Sendable, Codable, CustomStringConvertible {
    /// The guest's context ID, 3 to 2^32 - 2.
    public var guestCID: UInt32
    /// The listening socket's path.
    public var socketPath: String

    public init(guestCID: UInt32, socketPath: String) {
        self.guestCID = guestCID
        self.socketPath = socketPath
    }

    /// Parses a `--vsock` value; errors are one line naming the problem and the fix.
    public static func parse(_ spec: String) throws(ConfigError) -> VsockSetting {
        func problem(_ what: String) -> ConfigError { ConfigError("vsock '\(spec)': \(what)") }
        let usage = "write cid=N,uds=PATH, like cid=3,uds=/tmp/tern.vsock"
        var cid: UInt32?
        var path: String?
        for field in spec.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = field.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[1].isEmpty else { throw problem("'\(field)' is not key=value; \(usage)") }
            switch parts[0] {
            case "cid":
                guard cid == nil else { throw problem("cid is given twice") }
                guard let value = UInt32(parts[1]) else {
                    throw problem("cid '\(parts[1])' is not a number from 3 to \(UInt32.max - 1)")
                }
                guard value >= 3, value != UInt32.max else {
                    let reserved = "0 to 2 are the hypervisor, loopback and host, \(UInt32.max) means any"
                    throw problem("cid \(value) is reserved (\(reserved)); use 3 to \(UInt32.max - 1)")
                }
                cid = value
            case "uds":
                guard path == nil else { throw problem("uds is given twice") }
                let value = String(parts[1])
                let length = value.utf8.count
                guard length <= UnixSocketVsockBackend.maximumPathLength else {
                    let limit = UnixSocketVsockBackend.maximumPathLength
                    throw problem("uds path is \(length) bytes; use at most \(limit), so that PATH_PORT fits a socket address")
                }
                guard !value.utf8.contains(0) else { throw problem("uds path contains a NUL byte") }
                path = value
            default:
                throw problem("unknown option '\(parts[0])'; \(usage)")
            }
        }
        guard let cid else { throw problem("no cid=N; \(usage)") }
        guard let path else { throw problem("no uds=PATH; \(usage)") }
        return VsockSetting(guestCID: cid, socketPath: path)
    }

    public init(from decoder: any Decoder) throws {
        self = try VsockSetting.parse(decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    /// The setting as `parse` reads it.
    public var description: String { "cid=\(guestCID),uds=\(socketPath)" }
}

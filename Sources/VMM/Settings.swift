import Qcow2

/// A setting a user gave that Tern cannot use. The description is one line naming the problem and the fix.
public struct ConfigError: Error, Equatable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }
}

/// An amount of memory, written as bytes or with a K, M, G or T suffix (powers of 1024).
public struct MemorySize: Equatable, Sendable, Codable, CustomStringConvertible {
    public let bytes: UInt64

    public init(bytes: UInt64) {
        self.bytes = bytes
    }

    /// Parses "256M", "1G", "524288K" or a plain byte count.
    public init(parsing text: String) throws(ConfigError) {
        let trimmed = text.trimmingSpaces
        var digits = Substring(trimmed)
        if digits.last == "B" || digits.last == "b" { digits = digits.dropLast() }
        if digits.last == "i" { digits = digits.dropLast() }
        let shifts: [Character: UInt64] = ["K": 10, "M": 20, "G": 30, "T": 40, "k": 10, "m": 20, "g": 30, "t": 40]
        var shift: UInt64 = 0
        if let last = digits.last, let found = shifts[last] {
            shift = found
            digits = digits.dropLast()
        }
        guard let value = UInt64(digits), value > 0 else {
            throw ConfigError("memory size '\(text)' is not a positive number with an optional K, M, G or T suffix, like 256M")
        }
        guard value <= UInt64.max >> shift else { throw ConfigError("memory size '\(text)' is too large") }
        bytes = value << shift
    }

    /// Decodes a byte count (a JSON number) or a size string. A number must be a whole number of bytes.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let bytes = try? container.decode(UInt64.self) {
            self.bytes = bytes
        } else if let number = try? container.decode(Double.self) {
            guard number >= 1, number.rounded() == number else {
                throw ConfigError("\(number) is not a positive whole number of bytes; give bytes, or a size string like \"256M\"")
            }
            guard number < 0x1p64 else { throw ConfigError("\(number) bytes is too large") }
            self.bytes = UInt64(number)
        } else {
            self = try MemorySize(parsing: container.decode(String.self))
        }
    }

    /// Checks a size given as a bare number of bytes against `minimum`: a user who wrote 1024 meant 1024M.
    public static func checkBareNumber(_ text: String, option: String, minimum: UInt64) throws(ConfigError) {
        guard let value = UInt64(text.trimmingSpaces), value < minimum else { return }
        throw ConfigError("\(option) \(text): a bare number is bytes; did you mean \(text.trimmingSpaces)M?")
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public var description: String {
        for (suffix, shift) in [("T", UInt64(40)), ("G", 30), ("M", 20), ("K", 10)] where bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return "\(bytes)"
    }
}

/// A set of host CPUs, written like "3", "0-3" or "0-1+4" (ranges joined with '+').
public struct CPUSet: Equatable, Sendable, Codable, CustomStringConvertible {
    /// The CPU numbers, ascending and distinct.
    public let cpus: [Int32]

    public init(cpus: [Int32]) {
        self.cpus = Array(Set(cpus)).sorted()
    }

    public init(parsing text: String) throws(ConfigError) {
        var cpus: [Int32] = []
        for part in text.split(separator: "+", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count <= 2, let low = Int32(bounds[0]), low >= 0,
                  let high = bounds.count == 2 ? Int32(bounds[1]) : low, high >= low, high < 4096 else {
                throw ConfigError("CPU set '\(text)' is not valid; write a core (3), a range (0-3), or both joined with '+' (0-1+4)")
            }
            cpus.append(contentsOf: low...high)
        }
        self.init(cpus: cpus)
    }

    public init(from decoder: any Decoder) throws {
        self = try CPUSet(parsing: decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public var description: String {
        var parts: [String] = []
        var index = 0
        while index < cpus.count {
            var end = index
            while end + 1 < cpus.count && cpus[end + 1] == cpus[end] + 1 { end += 1 }
            parts.append(end == index ? "\(cpus[index])" : "\(cpus[index])-\(cpus[end])")
            index = end + 1
        }
        return parts.joined(separator: "+")
    }
}

/// Host CPUs for each vCPU, written as one CPU set per vCPU separated by commas: "0,1" or "0-1,2-3".
public struct PinList: Equatable, Sendable, Codable, CustomStringConvertible {
    public let sets: [CPUSet]

    public init(sets: [CPUSet]) {
        self.sets = sets
    }

    public init(parsing text: String) throws(ConfigError) {
        let trimmed = text.trimmingSpaces
        guard !trimmed.isEmpty else { throw ConfigError("pin list is empty; give one host core per vCPU, like --pin 0,1") }
        var sets: [CPUSet] = []
        for entry in trimmed.split(separator: ",", omittingEmptySubsequences: false) {
            do {
                sets.append(try CPUSet(parsing: String(entry)))
            } catch {
                throw ConfigError("pin list '\(text)': entry '\(entry)' is not a core, range or '+'-joined set; write one per vCPU, like 0,1 or 0-1,2-3")
            }
        }
        self.sets = sets
    }

    public init(from decoder: any Decoder) throws {
        self = try PinList(parsing: decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public var description: String { sets.map(\.description).joined(separator: ",") }

    /// Checks that there is one set per vCPU and that every CPU is one this process may use.
    public func validate(vcpuCount: Int, availableCPUs: [Int32]) throws(ConfigError) {
        guard sets.count == vcpuCount else {
            throw ConfigError("pin list '\(self)' has \(sets.count) entries for \(vcpuCount) vCPUs; give exactly one core or set per vCPU")
        }
        try CPUSet(cpus: sets.flatMap(\.cpus)).validate(availableCPUs: availableCPUs, option: "--pin")
    }
}

extension CPUSet {
    /// Checks that every CPU in the set is one this process may run on.
    public func validate(availableCPUs: [Int32], option: String) throws(ConfigError) {
        for cpu in cpus where !availableCPUs.contains(cpu) {
            throw ConfigError("\(option): host core \(cpu) is not available; this process may use cores \(CPUSet(cpus: availableCPUs))")
        }
    }
}

/// Where the guest's serial console goes.
public enum ConsoleSetting: Equatable, Sendable, Codable, CustomStringConvertible {
    /// Guest output to stdout; stdin to the guest (raw mode on a terminal).
    case stdio
    /// No console.
    case none
    /// Guest output appended to a file.
    case file(String)

    public init(parsing text: String) throws(ConfigError) {
        switch text {
        case "stdio": self = .stdio
        case "none": self = .none
        default:
            guard text.hasPrefix("file:"), text.count > 5 else {
                throw ConfigError("console '\(text)' is not valid; use stdio, none or file:PATH")
            }
            self = .file(String(text.dropFirst(5)))
        }
    }

    public init(from decoder: any Decoder) throws {
        self = try ConsoleSetting(parsing: decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public var description: String {
        switch self {
        case .stdio: return "stdio"
        case .none: return "none"
        case .file(let path): return "file:\(path)"
        }
    }
}

extension String {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}

/// A disk given to the guest as a virtio-blk device or on the AHCI controller: `path=FILE[,readonly=on]
/// [,format=raw|qcow2][,serial=ID][,cache=writeback|none][,aio=io_uring|threads|sync][,interface=virtio|ahci]
/// [,media=disk|cdrom]`.
public struct DiskSetting: Equatable, Sendable, Codable, CustomStringConvertible {
    public enum Format: String, Equatable, Sendable {
        case raw, qcow2
    }

    /// How reads and writes reach the image, named as QEMU names them.
    public enum AIO: String, Equatable, Sendable {
        /// Asynchronously through an io_uring (raw images; others, or hosts without io_uring, use the default
        /// of the other two: `threads` with `cache=none`, else `sync`).
        case ioUring = "io_uring"
        /// A pool of I/O threads, each pass's reads and writes in parallel.
        case threads
        /// Each request in turn on the device's I/O thread.
        case sync
    }

    /// The controller the disk sits on.
    public enum Interface: String, Equatable, Sendable {
        case virtio, ahci
    }

    /// What the drive is: a disk, or a read-only ATAPI CD-ROM (AHCI only).
    public enum Media: String, Equatable, Sendable {
        case disk, cdrom
    }

    public var path: String
    public var readOnly: Bool
    /// The image format; nil means detect it from the file.
    public var format: Format?
    /// What the guest reads as the disk's serial number (at most 20 bytes).
    public var serial: String?
    /// Whether the image goes through the host page cache (`writeback`, the default) or around it with
    /// O_DIRECT (`none`). Guest flushes are made durable with fdatasync either way.
    public var cache: CacheMode
    /// How reads and writes reach the image.
    public var aio: AIO
    public var interface: Interface
    public var media: Media

    public init(path: String, readOnly: Bool = false, format: Format? = nil, serial: String? = nil,
                cache: CacheMode = .writeback, aio: AIO = .ioUring, interface: Interface = .virtio, media: Media = .disk) {
        self.path = path
        self.readOnly = readOnly || media == .cdrom
        self.format = format
        self.serial = serial
        self.cache = cache
        self.aio = aio
        self.interface = interface
        self.media = media
    }

    public init(parsing text: String) throws(ConfigError) {
        var path: String?
        var readOnly = false
        var format: Format?
        var serial: String?
        var cache = CacheMode.writeback
        var seen: Set<Substring> = []
        var aio = AIO.ioUring
        var interface = Interface.virtio
        var media = Media.disk
        for option in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = option.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[1].isEmpty else {
                throw ConfigError("disk '\(text)': '\(option)' is not key=value; write path=FILE[,readonly=on][,format=raw|qcow2][,serial=ID][,cache=writeback|none][,aio=io_uring|threads|sync][,interface=virtio|ahci][,media=disk|cdrom]")
            }
            guard seen.insert(parts[0]).inserted else { throw ConfigError("disk '\(text)': \(parts[0]) is given twice; give it once") }
            let value = String(parts[1])
            switch parts[0] {
            case "path": path = value
            case "readonly":
                guard value == "on" || value == "off" else { throw ConfigError("disk '\(text)': readonly takes on or off") }
                readOnly = value == "on"
            case "format":
                guard let known = Format(rawValue: value) else { throw ConfigError("disk '\(text)': format '\(value)' is not raw or qcow2") }
                format = known
            case "serial":
                guard value.utf8.count <= 20 else { throw ConfigError("disk '\(text)': serial is longer than 20 bytes") }
                serial = value
            case "cache":
                guard let mode = CacheMode(rawValue: value) else {
                    throw ConfigError("disk '\(text)': cache '\(value)' is not writeback (page cache) or none (O_DIRECT)")
                }
                cache = mode
            case "aio":
                guard let mode = AIO(rawValue: value) else {
                    throw ConfigError("disk '\(text)': aio '\(value)' is not io_uring, threads or sync")
                }
                aio = mode
            case "interface":
                guard let known = Interface(rawValue: value) else { throw ConfigError("disk '\(text)': interface '\(value)' is not virtio or ahci") }
                interface = known
            case "media":
                guard let known = Media(rawValue: value) else { throw ConfigError("disk '\(text)': media '\(value)' is not disk or cdrom") }
                media = known
            default:
                throw ConfigError("disk '\(text)': unknown option '\(parts[0])'; use path, readonly, format, serial, cache, aio, interface or media")
            }
        }
        guard let path else { throw ConfigError("disk '\(text)' has no path=FILE") }
        guard media == .disk || interface == .ahci else { throw ConfigError("disk '\(text)': a CD-ROM needs interface=ahci") }
        self.init(
            path: path, readOnly: readOnly, format: format, serial: serial, cache: cache, aio: aio, interface: interface,
            media: media)
    }

    public init(from decoder: any Decoder) throws {
        self = try DiskSetting(parsing: decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public var description: String {
        var text = "path=\(path)"
        if readOnly { text += ",readonly=on" }
        if let format { text += ",format=\(format.rawValue)" }
        if let serial { text += ",serial=\(serial)" }
        if cache != .writeback { text += ",cache=\(cache.rawValue)" }
        if aio != .ioUring { text += ",aio=\(aio.rawValue)" }
        if interface != .virtio { text += ",interface=\(interface.rawValue)" }
        if media != .disk { text += ",media=\(media.rawValue)" }
        return text
    }
}

import Firmware

/// `--firmware seabios|PATH[,log=FILE][,boot=cdrom+disk]`: start the guest from a firmware image at the reset vector
/// instead of loading a kernel. `seabios` is Debian's build; `log` appends what the firmware writes to its debug port
/// (0x402); `boot` (also `--boot order=cdrom,disk`) puts drives of those kinds first, in that order; otherwise the
/// drives boot in the order they were given.
public struct FirmwareSetting: Equatable, Sendable, Codable, CustomStringConvertible {
    /// The image file.
    public var path: String
    /// Where the firmware's debug output goes; without it the debug port is absent and the firmware stays quiet.
    public var log: String?
    /// Drive kinds in boot priority order.
    public var bootOrder: [DiskSetting.Media]

    public init(path: String = FirmwareImage.seaBIOSPath, log: String? = nil, bootOrder: [DiskSetting.Media] = []) {
        self.path = path
        self.log = log
        self.bootOrder = bootOrder
    }

    /// Parses `order`, kinds joined by `separator`: `cdrom,disk` for --boot order=, `cdrom+disk` inside --firmware.
    public static func parseBootOrder(_ order: Substring, separator: Character) throws(ConfigError) -> [DiskSetting.Media] {
        var kinds: [DiskSetting.Media] = []
        for word in order.split(separator: separator, omittingEmptySubsequences: false) {
            guard let kind = DiskSetting.Media(rawValue: String(word)), !kinds.contains(kind) else {
                throw ConfigError("boot order '\(order)': give disk and cdrom, each at most once")
            }
            kinds.append(kind)
        }
        return kinds
    }

    public init(parsing text: String) throws(ConfigError) {
        var options = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let image = options.first, !image.isEmpty else {
            throw ConfigError("firmware '\(text)': give seabios or the path of an image, then optionally ,log=FILE")
        }
        options.removeFirst()
        var log: String?
        var bootOrder: [DiskSetting.Media] = []
        for option in options {
            if option.hasPrefix("log="), option.count > 4 {
                log = String(option.dropFirst(4))
            } else if option.hasPrefix("boot=") {
                bootOrder = try Self.parseBootOrder(option.dropFirst(5), separator: "+")
            } else {
                throw ConfigError("firmware '\(text)': unknown option '\(option)'; the options are log=FILE and boot=KIND+KIND")
            }
        }
        self.init(path: image == "seabios" ? FirmwareImage.seaBIOSPath : image, log: log, bootOrder: bootOrder)
    }

    public init(from decoder: any Decoder) throws {
        self = try FirmwareSetting(parsing: decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public var description: String {
        path + (log.map { ",log=\($0)" } ?? "")
            + (bootOrder.isEmpty ? "" : ",boot=" + bootOrder.map(\.rawValue).joined(separator: "+"))
    }
}

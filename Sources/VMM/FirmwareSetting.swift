import Firmware

/// `--firmware seabios|PATH[,log=FILE]`: start the guest from a firmware image at the reset vector instead of
/// loading a kernel. `seabios` is Debian's build; `log` appends what the firmware writes to its debug port (0x402).
public struct FirmwareSetting: Equatable, Sendable, Codable, CustomStringConvertible {
    /// The image file.
    public var path: String
    /// Where the firmware's debug output goes; without it the debug port is absent and the firmware stays quiet.
    public var log: String?

    public init(path: String = FirmwareImage.seaBIOSPath, log: String? = nil) {
        self.path = path
        self.log = log
    }

    public init(parsing text: String) throws(ConfigError) {
        var options = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let image = options.first, !image.isEmpty else {
            throw ConfigError("firmware '\(text)': give seabios or the path of an image, then optionally ,log=FILE")
        }
        options.removeFirst()
        var log: String?
        for option in options {
            guard option.hasPrefix("log="), option.count > 4 else {
                throw ConfigError("firmware '\(text)': unknown option '\(option)'; the only option is log=FILE")
            }
            log = String(option.dropFirst(4))
        }
        self.init(path: image == "seabios" ? FirmwareImage.seaBIOSPath : image, log: log)
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
    }
}

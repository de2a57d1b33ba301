import VirtioDevices

/// A virtio-balloon device: `[target=SIZE][,deflate-on-oom=on][,stats-interval=SECONDS][,free-page-reporting=on]`;
/// an empty value takes every default. `target` is how much memory the guest is asked to give back from the start
/// (the balloon's size, default none); `stats-interval` turns on the statistics queue and asks the guest for fresh
/// statistics that often. In JSON configuration it is the same string.
public struct BalloonSetting: Equatable, Sendable, Codable, CustomStringConvertible {
    /// Longest statistics interval taken: a day.
    public static let maximumStatisticsInterval: UInt32 = 86_400

    /// Memory the guest is asked to give back at start; nil for none.
    public var target: MemorySize?
    /// Offer DEFLATE_ON_OOM: the guest takes pages back from the balloon when it runs out of memory.
    public var deflateOnOOM: Bool
    /// Seconds between statistics requests; nil leaves the statistics queue out.
    public var statisticsInterval: UInt32?
    /// Offer free page reporting: the guest hands its free pages back to the host as it frees them.
    public var freePageReporting: Bool

    public init(
        target: MemorySize? = nil, deflateOnOOM: Bool = false, statisticsInterval: UInt32? = nil,
        freePageReporting: Bool = false
    ) {
        self.target = target
        self.deflateOnOOM = deflateOnOOM
        self.statisticsInterval = statisticsInterval
        self.freePageReporting = freePageReporting
    }

    /// What the device offers for this setting.
    public var options: Balloon.Options {
        Balloon.Options(
            deflateOnOOM: deflateOnOOM, statistics: statisticsInterval != nil, freePageReporting: freePageReporting)
    }

    /// Parses a `--balloon` value ("on" or "" for the defaults); errors are one line naming the problem and the fix.
    public static func parse(_ spec: String) throws(ConfigError) -> BalloonSetting {
        func problem(_ what: String) -> ConfigError { ConfigError("balloon '\(spec)': \(what)") }
        let usage = "write [target=SIZE][,deflate-on-oom=on][,stats-interval=SECONDS][,free-page-reporting=on]"
        var setting = BalloonSetting()
        guard !spec.isEmpty, spec != "on" else { return setting }
        var seen: Set<Substring> = []
        for field in spec.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = field.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[1].isEmpty else { throw problem("'\(field)' is not key=value; \(usage)") }
            guard seen.insert(parts[0]).inserted else { throw problem("\(parts[0]) is given twice") }
            let value = String(parts[1])
            func onOff() throws(ConfigError) -> Bool {
                guard value == "on" || value == "off" else {
                    throw problem("\(parts[0]) takes on or off, not '\(value)'")
                }
                return value == "on"
            }
            switch parts[0] {
            case "target":
                do { setting.target = try MemorySize(parsing: value) } catch { throw problem("target: \(error)") }
            case "deflate-on-oom":
                setting.deflateOnOOM = try onOff()
            case "free-page-reporting":
                setting.freePageReporting = try onOff()
            case "stats-interval":
                guard let seconds = UInt32(value), seconds >= 1, seconds <= Self.maximumStatisticsInterval else {
                    let limit = Self.maximumStatisticsInterval
                    throw problem("stats-interval '\(value)' is not a whole number of seconds from 1 to \(limit)")
                }
                setting.statisticsInterval = seconds
            default:
                throw problem("unknown option '\(parts[0])'; \(usage)")
            }
        }
        return setting
    }

    /// Checks the setting against the guest's RAM.
    public func validate(memory: MemorySize) throws(ConfigError) {
        if let target, target.bytes > memory.bytes {
            throw ConfigError(
                "balloon target \(target) is more than the guest's \(memory) of RAM; give a smaller target=SIZE")
        }
    }

    public init(from decoder: any Decoder) throws {
        self = try BalloonSetting.parse(decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    /// The setting as `parse` reads it (empty for the defaults).
    public var description: String {
        var fields: [String] = []
        if let target { fields.append("target=\(target)") }
        if deflateOnOOM { fields.append("deflate-on-oom=on") }
        if let statisticsInterval { fields.append("stats-interval=\(statisticsInterval)") }
        if freePageReporting { fields.append("free-page-reporting=on") }
        return fields.joined(separator: ",")
    }
}

/// Decides, after each pre-copy round, whether to send another round, slow the guest down, or pause it and send
/// the rest: the remaining dirty bytes must go out within the downtime target at the bandwidth measured so far.
public struct ConvergencePolicy: Sendable {
    /// What to do next.
    public enum Decision: Equatable, Sendable {
        /// Send another round of dirty pages.
        case anotherRound
        /// Send another round with the vCPUs throttled to run only `percent` of the time.
        case throttle(percent: Int)
        /// Pause the guest and send what remains with its state.
        case stopAndCopy
    }

    /// The longest pause the guest may see, in nanoseconds.
    public let downtimeTarget: UInt64
    /// After this many rounds that did not shrink the dirty set enough, throttling starts.
    public let roundsBeforeThrottling: Int
    /// Throttling starts here and grows by `throttleStep` per round that still does not converge.
    public let initialThrottle: Int
    public let throttleStep: Int
    /// The vCPUs always keep at least this share of their time.
    public let minimumRunPercent: Int
    /// Past this many rounds the migration stops and copies whatever remains, so that it always ends.
    public let maximumRounds: Int

    public private(set) var rounds = 0
    public private(set) var runPercent = 100
    /// Bytes per nanosecond sent so far, in bytes and nanoseconds.
    public private(set) var bytesSent: UInt64 = 0
    public private(set) var sendingNanoseconds: UInt64 = 0
    private var stalledRounds = 0
    private var previousDirtyBytes: UInt64 = .max

    public init(
        downtimeTarget: UInt64, roundsBeforeThrottling: Int = 2, initialThrottle: Int = 20, throttleStep: Int = 10,
        minimumRunPercent: Int = 1, maximumRounds: Int = 30
    ) {
        self.downtimeTarget = downtimeTarget
        self.roundsBeforeThrottling = roundsBeforeThrottling
        self.initialThrottle = initialThrottle
        self.throttleStep = throttleStep
        self.minimumRunPercent = minimumRunPercent
        self.maximumRounds = maximumRounds
    }

    /// The bandwidth measured so far, in bytes per second; nil before the first round.
    public var bytesPerSecond: UInt64? {
        sendingNanoseconds == 0 ? nil : UInt64(Double(bytesSent) * 1e9 / Double(sendingNanoseconds))
    }

    /// How long sending `bytes` would take at the measured bandwidth, in nanoseconds.
    public func expectedNanoseconds(for bytes: UInt64) -> UInt64? {
        guard let rate = bytesPerSecond, rate > 0 else { return nil }
        return UInt64(Double(bytes) * 1e9 / Double(rate))
    }

    /// Records a finished round (`sent` bytes in `nanoseconds`) and decides what to do with the `dirtyBytes` the
    /// guest wrote meanwhile.
    public mutating func roundFinished(sent: UInt64, nanoseconds: UInt64, dirtyBytes: UInt64) -> Decision {
        rounds += 1
        bytesSent += sent
        sendingNanoseconds += nanoseconds
        if let expected = expectedNanoseconds(for: dirtyBytes), expected <= downtimeTarget { return .stopAndCopy }
        if dirtyBytes == 0 || rounds >= maximumRounds { return .stopAndCopy }
        // A round that did not shrink what remains by at least a tenth counts as stalled.
        if dirtyBytes > previousDirtyBytes / 10 * 9 { stalledRounds += 1 } else { stalledRounds = 0 }
        previousDirtyBytes = dirtyBytes
        guard stalledRounds >= roundsBeforeThrottling else { return .anotherRound }
        let throttled = runPercent == 100 ? 100 - initialThrottle : runPercent - throttleStep
        runPercent = max(minimumRunPercent, throttled)
        return .throttle(percent: runPercent)
    }
}

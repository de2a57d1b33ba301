import Synchronization

/// Collects the lines a device logs, for tests that count them.
public final class LogLines: Sendable {
    private let storage = Mutex<[String]>([])

    public init() {}

    public var lines: [String] { storage.withLock { $0 } }
    public var sink: @Sendable (String) -> Void { { line in self.storage.withLock { $0.append(line) } } }
}

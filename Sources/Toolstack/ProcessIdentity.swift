import Glibc

/// One process for good: its PID and its start time (field 22 of /proc/PID/stat, in clock ticks since boot), so that a
/// later process that reuses the PID is never taken for it.
public struct ProcessIdentity: Sendable, Equatable {
    public var pid: Int32
    public var startTime: UInt64

    public init(pid: Int32, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }

    /// The identity of process `pid` (a zombie included), nil when there is none.
    public static func current(pid: Int32) -> ProcessIdentity? {
        stat(of: pid).map { ProcessIdentity(pid: pid, startTime: $0.startTime) }
    }

    /// This process is still alive (a zombie counts as gone).
    public var isAlive: Bool {
        guard let now = Self.stat(of: pid), !now.zombie else { return false }
        return now.startTime == startTime
    }

    /// Field 22 (start time) and field 3 (state) of /proc/PID/stat. The command name (field 2) may hold spaces and
    /// parentheses, so fields are counted after its last ')'. Nil for a missing process.
    static func stat(of pid: Int32) -> (startTime: UInt64, zombie: Bool)? {
        let descriptor = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let count = read(descriptor, &buffer, buffer.count)
        guard count > 0, let close = buffer[..<count].lastIndex(of: UInt8(ascii: ")")) else { return nil }
        // After ')': field 3 (state) is first, so field 22 is the 20th.
        let fields = buffer[(close + 1)..<count].split(separator: UInt8(ascii: " "))
        guard fields.count >= 20, let startTime = UInt64(String(decoding: fields[19], as: UTF8.self)) else { return nil }
        return (startTime, fields[0].first == UInt8(ascii: "Z"))
    }
}

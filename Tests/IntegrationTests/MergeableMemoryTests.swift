import Glibc
import Testing
import VMM

/// KSM's sysfs controls, set for a test and put back afterwards.
struct KSMSettings {
    static let directory = "/sys/kernel/mm/ksm"
    static let keys = ["run", "pages_to_scan", "sleep_millisecs"]
    let saved: [String: String]

    /// Reads the current settings; nil when the host has no KSM.
    init?() {
        guard access(Self.directory, F_OK) == 0 else { return nil }
        var saved: [String: String] = [:]
        for key in Self.keys {
            guard let value = Self.read(key) else { return nil }
            saved[key] = value
        }
        self.saved = saved
    }

    static func read(_ key: String) -> String? {
        let descriptor = open("\(directory)/\(key)", O_RDONLY)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = Glibc.read(descriptor, &buffer, buffer.count)
        guard count > 0 else { return nil }
        return String(decoding: buffer[..<count].prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    }

    @discardableResult
    static func write(_ key: String, _ value: String) -> Bool {
        let descriptor = open("\(directory)/\(key)", O_WRONLY)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        let bytes = Array(value.utf8)
        return Glibc.write(descriptor, bytes, bytes.count) == bytes.count
    }

    func restore() {
        for key in Self.keys.reversed() { Self.write(key, saved[key]!) }
    }
}

/// Pages of this process that KSM has merged.
private func mergedPages() -> Int {
    let descriptor = open("/proc/self/ksm_merging_pages", O_RDONLY)
    guard descriptor >= 0 else { return 0 }
    defer { close(descriptor) }
    var buffer = [UInt8](repeating: 0, count: 32)
    let count = read(descriptor, &buffer, buffer.count)
    guard count > 0 else { return 0 }
    return Int(String(decoding: buffer[..<count].prefix { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self)) ?? 0
}

@Suite(.serialized, .timeLimit(.minutes(3))) struct MergeableMemoryTests {
    /// Two mergeable VMs whose guests write the same 32 MiB: with KSM scanning fast, their pages merge.
    @Test(.enabled(if: access(KSMSettings.directory, F_OK) == 0, "the host kernel has no KSM (/sys/kernel/mm/ksm is missing)"))
    func identicalGuestMemoryIsMerged() throws {
        let settings = try #require(KSMSettings(), "cannot read KSM's settings under \(KSMSettings.directory)")
        defer { settings.restore() }
        let config = VMConfig(kernel: try Repository.guest("memtouch"), cmdline: "mib=32", memory: MemorySize(bytes: 128 << 20),
                              console: .none, mergeable: true)
        let machines = try (0..<2).map { _ in try Machine(config: config, console: CapturedOutput()) }
        for machine in machines { #expect(machine.run() == .guestExit(0)) }
        let before = mergedPages()
        try #require(KSMSettings.write("pages_to_scan", "20000") && KSMSettings.write("sleep_millisecs", "10")
                     && KSMSettings.write("run", "1"), "cannot start KSM")
        var merged = before
        for _ in 0..<600 where merged < before + 4096 {
            usleep(100_000)
            merged = mergedPages()
        }
        #expect(merged >= before + 4096, "KSM merged \(merged - before) pages of the two guests' 2 x 8192 identical ones")
        withExtendedLifetime(machines) {}
    }
}

import Glibc

extension Collection<UInt8> {
    /// The little-endian integer at `offset` bytes from the start.
    func integer<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        let bytes = Array(self)
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size { value |= T(bytes[offset + index]) << (8 * index) }
        return value
    }

    /// The ASCII text of `count` bytes at `offset`.
    func text(at offset: Int, count: Int) -> String {
        String(decoding: Array(self)[offset..<offset + count], as: UTF8.self)
    }

    /// The 8-bit sum of the bytes; zero for a table with a correct checksum.
    var byteSum: UInt8 { reduce(0, &+) }

    /// Whether `needle` occurs as a contiguous run.
    func contains(bytes needle: [UInt8]) -> Bool {
        let haystack = Array(self)
        guard needle.count <= haystack.count else { return false }
        return (0...(haystack.count - needle.count)).contains { Array(haystack[$0..<$0 + needle.count]) == needle }
    }
}

/// A scratch directory under /tmp, removed by `remove()`.
struct TemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/acpitests.XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { buffer in
            guard let result = mkdtemp(buffer.baseAddress!) else { fatalError("mkdtemp failed") }
            return String(cString: result)
        }
    }

    func write(_ bytes: [UInt8], to name: String) {
        guard let file = fopen(path + "/" + name, "wb") else { fatalError("cannot create \(path)/\(name)") }
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        fclose(file)
    }

    func readBytes(_ name: String) -> [UInt8]? {
        guard let file = fopen(path + "/" + name, "rb") else { return nil }
        defer { fclose(file) }
        return readAll(file)
    }

    func remove() {
        _ = shell("rm -rf '\(path)'")
    }
}

/// Runs `command` with `/bin/sh -c`, returning its exit status and combined output.
func shell(_ command: String) -> (status: Int32, output: String) {
    guard let pipe = popen(command + " 2>&1", "r") else { return (-1, "popen failed") }
    let output = readAll(pipe)
    let status = pclose(pipe)
    return ((status >> 8) & 0xFF, String(decoding: output, as: UTF8.self))
}

/// Everything left to read from `file`.
private func readAll(_ file: UnsafeMutablePointer<FILE>) -> [UInt8] {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
        if count == 0 { return bytes }
        bytes += chunk[0..<count]
    }
}

import Foundation
import Qcow2
import Testing

/// A scratch directory removed when the value goes away.
final class TempDir: @unchecked Sendable {
    let path: String
    init() {
        let base = FileManager.default.temporaryDirectory.path
        path = base + "/tern-qcow2-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
}

struct ProcResult {
    var status: Int32
    var out: String
    var err: String
}

/// Locates qemu-img; records a failure (not a skip) when it is missing.
func qemuImgPath() -> String? {
    for p in ["/usr/bin/qemu-img", "/usr/local/bin/qemu-img"] where FileManager.default.isExecutableFile(atPath: p) { return p }
    Issue.record("qemu-img is not installed: the qcow2 interop tests need it (apt-get install -y qemu-utils)")
    return nil
}

func qemuIOPath() -> String? {
    for p in ["/usr/bin/qemu-io", "/usr/local/bin/qemu-io"] where FileManager.default.isExecutableFile(atPath: p) { return p }
    Issue.record("qemu-io is not installed: the qcow2 interop tests need it (apt-get install -y qemu-utils)")
    return nil
}

@discardableResult
func run(_ exe: String, _ args: [String]) -> ProcResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    let o = Pipe(), e = Pipe()
    p.standardOutput = o
    p.standardError = e
    do { try p.run() } catch {
        return ProcResult(status: -1, out: "", err: "\(error)")
    }
    let od = o.fileHandleForReading.readDataToEndOfFile()
    let ed = e.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return ProcResult(status: p.terminationStatus, out: String(decoding: od, as: UTF8.self), err: String(decoding: ed, as: UTF8.self))
}

@discardableResult
func qemuImg(_ args: String...) -> ProcResult {
    guard let q = qemuImgPath() else { return ProcResult(status: -1, out: "", err: "qemu-img missing") }
    return run(q, args)
}

@discardableResult
func qemuIO(_ file: String, _ cmds: [String], format: String = "qcow2") -> ProcResult {
    guard let q = qemuIOPath() else { return ProcResult(status: -1, out: "", err: "qemu-io missing") }
    var args = ["-f", format]
    for c in cmds { args += ["-c", c] }
    args.append(file)
    let r = run(q, args)
    #expect(r.status == 0, "qemu-io \(cmds) failed: \(r.err)")
    return r
}

/// `qemu-img check` must report no errors and no leaks. With -U, as the test may still hold the image open.
func expectQemuClean(_ path: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let r = qemuImg("check", "-U", "-f", "qcow2", path)
    #expect(r.status == 0, "qemu-img check \(path): status \(r.status)\n\(r.out)\(r.err)", sourceLocation: sourceLocation)
}

/// `qemu-img compare` of an image with a raw file (-U: the test may still hold the image open).
func expectQemuSame(_ path: String, _ raw: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let r = qemuImg("compare", "-U", "-f", "qcow2", "-F", "raw", path, raw)
    #expect(r.status == 0, "qemu-img compare \(path) \(raw): \(r.out)\(r.err)", sourceLocation: sourceLocation)
}

func writeFile(_ path: String, _ bytes: [UInt8]) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
}

func readFile(_ path: String) -> [UInt8] {
    [UInt8](FileManager.default.contents(atPath: path) ?? Data())
}

/// Reads a whole device.
func readAll(_ dev: any BlockBackend, chunk: Int = 1 << 20) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: Int(dev.virtualSize))
    var pos = 0
    while pos < out.count {
        let n = min(chunk, out.count - pos)
        try out.withUnsafeMutableBytes { b in
            try dev.read(at: UInt64(pos), into: UnsafeMutableRawBufferPointer(rebasing: b[pos..<pos + n]))
        }
        pos += n
    }
    return out
}

/// Deterministic pseudo-random numbers.
struct RNG {
    var s: UInt64
    init(_ seed: UInt64) { s = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
    mutating func below(_ n: UInt64) -> UInt64 { next() % n }
}

/// A qcow2 image and the bytes it should hold.
final class Model {
    var bytes: [UInt8]
    init(size: Int, initial: [UInt8]? = nil) {
        bytes = initial ?? [UInt8](repeating: 0, count: size)
        if bytes.count < size { bytes += [UInt8](repeating: 0, count: size - bytes.count) }
        if bytes.count > size { bytes.removeLast(bytes.count - size) }
    }

    func write(_ img: any BlockBackend, at off: Int, count: Int, fill: UInt8, rng: inout RNG) throws {
        var data = [UInt8](repeating: fill, count: count)
        for i in stride(from: 0, to: count, by: 97) { data[i] = UInt8(truncatingIfNeeded: rng.next()) }
        try data.withUnsafeBytes { try img.write(at: UInt64(off), from: $0) }
        bytes.replaceSubrange(off..<off + count, with: data)
    }

    func zero(_ img: any BlockBackend, at off: Int, count: Int) throws {
        try img.writeZeroes(at: UInt64(off), length: UInt64(count))
        bytes.replaceSubrange(off..<off + count, with: repeatElement(0, count: count))
    }
}

/// Random writes, zeroes and (for images without a backing file) discards.
func randomWorkload(_ img: Qcow2Image, _ model: Model, ops: Int, seed: UInt64, discard: Bool) throws {
    var rng = RNG(seed)
    let size = model.bytes.count
    for i in 0..<ops {
        let off = Int(rng.below(UInt64(size)))
        let count = min(size - off, 1 + Int(rng.below(UInt64(min(size / 4, 200_000)))))
        switch rng.below(10) {
        case 0 where discard:
            // Discard of whole clusters with no backing file reads back as zeros.
            let cs = Int(img.clusterSize)
            let a = (off + cs - 1) / cs * cs, b = (off + count) / cs * cs
            if a < b {
                try img.discard(at: UInt64(a), length: UInt64(b - a))
                model.bytes.replaceSubrange(a..<b, with: repeatElement(0, count: b - a))
            }
        case 1:
            try model.zero(img, at: off, count: count)
        default:
            try model.write(img, at: off, count: count, fill: UInt8(truncatingIfNeeded: i), rng: &rng)
        }
    }
}

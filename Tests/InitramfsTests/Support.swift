import Glibc
import Initramfs
import Testing

/// A fresh directory under /tmp, removed when the value is released.
final class TempDirectory {
    let path: String

    init() {
        var template = Array("/tmp/tern-initramfs-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }

    deinit { _ = system("rm -rf '\(path)'") }

    func file(_ name: String) -> String { "\(path)/\(name)" }
}

/// Runs `command` with /bin/sh; returns its exit status and combined stdout and stderr.
func shell(_ command: String) -> (status: Int32, output: String) {
    let dir = TempDirectory()
    let raw = system("( \(command) ) >'\(dir.file("out"))' 2>&1")
    let output = (try? readBytes(dir.file("out"))).map { String(decoding: $0, as: UTF8.self) } ?? ""
    return (raw == -1 ? -1 : (raw >> 8) & 0xFF, output)
}

struct IOFailure: Error, CustomStringConvertible {
    let description: String
}

func readBytes(_ path: String) throws -> [UInt8] {
    guard let file = fopen(path, "rb") else { throw IOFailure(description: "cannot open \(path)") }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n == 0 { return bytes }
        bytes.append(contentsOf: chunk[0..<n])
    }
}

func writeBytes(_ bytes: [UInt8], to path: String) throws {
    guard let file = fopen(path, "wb") else { throw IOFailure(description: "cannot create \(path)") }
    defer { fclose(file) }
    guard fwrite(bytes, 1, bytes.count, file) == bytes.count else { throw IOFailure(description: "short write to \(path)") }
}

func writeText(_ text: String, to path: String) throws { try writeBytes(Array(text.utf8), to: path) }

func makeDirectory(_ path: String) { _ = system("mkdir -p '\(path)'") }

/// The target of the symlink at `path`.
func linkTarget(_ path: String) -> String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink(path, &buffer, buffer.count - 1)
    guard n >= 0 else { return nil }
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func fileMode(_ path: String) -> UInt32? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return info.st_mode
}

/// A minimal static x86-64 ELF header (no program headers), enough to pass the busybox check.
func fakeStaticELF(interpreter: Bool = false) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: interpreter ? 64 + 56 : 64)
    bytes.replaceSubrange(0..<8, with: [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0])
    bytes[16] = 2  // ET_EXEC
    bytes[18] = 62  // EM_X86_64
    if interpreter {
        bytes[32] = 64  // e_phoff
        bytes[54] = 56  // e_phentsize
        bytes[56] = 1  // e_phnum
        bytes[64] = 3  // PT_INTERP
    }
    return bytes
}

/// A modules directory `root/version` holding `modules.dep` and an empty-ish file for each module listed.
func makeModulesDirectory(root: String, version: String, dep: String) throws -> String {
    let directory = "\(root)/\(version)"
    makeDirectory(directory)
    try writeText(dep, to: "\(directory)/modules.dep")
    for line in dep.split(separator: "\n") where !line.hasPrefix("#") {
        guard let colon = line.firstIndex(of: ":") else { continue }
        let path = "\(directory)/\(line[..<colon])"
        makeDirectory(String(path[..<path.lastIndex(of: "/")!]))
        try writeText("module \(line[..<colon])\n", to: path)
    }
    return directory
}

/// The installed Debian kernel's modules directory and busybox; records a failure naming what to install.
func installedKernelAndBusybox() -> (modules: String, busybox: String)? {
    var info = stat()
    guard stat("/bin/busybox", &info) == 0 else {
        Issue.record("/bin/busybox is missing: apt-get install -y busybox-static")
        return nil
    }
    guard let version = InitramfsBuilder.installedKernels(in: "/lib/modules").last else {
        Issue.record("no kernel under /lib/modules: apt-get install -y linux-image-amd64")
        return nil
    }
    return ("/lib/modules/\(version)", "/bin/busybox")
}

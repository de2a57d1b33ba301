import Foundation
import Qcow2
import Testing

/// `cache=none`: files opened with O_DIRECT, unaligned requests bounced through an aligned buffer.
@Suite struct DirectIOTests {
    /// /tmp may be a file system without O_DIRECT; the work tree's is the one the VMs use in these tests.
    static func scratch(_ name: String) -> String {
        "\(FileManager.default.currentDirectoryPath)/.build/tern-direct-\(getpid())-\(name)"
    }

    @Test func unalignedRequestsMatchBufferedIO() throws {
        let path = Self.scratch("mixed")
        defer { unlink(path) }
        let size = 3 * 4096 + 1000
        var reference = [UInt8](repeating: 0, count: size)
        for index in reference.indices { reference[index] = UInt8(truncatingIfNeeded: index &* 31 &+ 7) }
        try reference.withUnsafeBytes { try PosixFile(path: path, writable: true, create: true).pwrite($0, at: 0) }

        let direct = try PosixFile(path: path, writable: true, cache: .none)
        // Writes that start and end mid-block, one spanning blocks, one in the partial last block.
        let writes: [(offset: Int, count: Int)] = [(10, 100), (4000, 200), (8190, 4100), (size - 500, 499)]
        for (number, write) in writes.enumerated() {
            let bytes = [UInt8](repeating: UInt8(0xA0 + number), count: write.count)
            try bytes.withUnsafeBytes { try direct.pwrite($0, at: UInt64(write.offset)) }
            reference.replaceSubrange(write.offset..<(write.offset + write.count), with: bytes)
        }
        #expect(try direct.size() == UInt64(size), "read-modify-write leaves the file size alone")
        for (offset, count) in [(0, size), (1, 17), (4095, 2), (8000, 5000), (size - 3, 3)] {
            var read = [UInt8](repeating: 0xEE, count: count)
            try read.withUnsafeMutableBytes { try direct.pread($0, at: UInt64(offset)) }
            #expect(read == Array(reference[offset..<(offset + count)]), "read of \(count) at \(offset)")
        }
        var buffered = [UInt8](repeating: 0, count: size)
        try buffered.withUnsafeMutableBytes { try PosixFile(path: path, writable: false, forceShare: true).pread($0, at: 0) }
        #expect(buffered == reference)
    }

    @Test func writesPastTheEndGrowTheFileExactly() throws {
        let path = Self.scratch("grow")
        defer { unlink(path) }
        let file = try PosixFile(path: path, writable: true, create: true, cache: .none)
        try [UInt8](repeating: 7, count: 10).withUnsafeBytes { try file.pwrite($0, at: 5000) }
        #expect(try file.size() == 5010)
        var read = [UInt8](repeating: 0xEE, count: 20)
        try read.withUnsafeMutableBytes { try file.pread($0, at: 4995) }
        #expect(read == [UInt8](repeating: 0, count: 5) + [UInt8](repeating: 7, count: 10) + [UInt8](repeating: 0, count: 5))
    }

    /// A qcow2 image with a backing file, written and read through O_DIRECT, stays consistent for qemu-img.
    @Test func qcow2ThroughDirectIO() throws {
        guard let qemuImg = qemuImgPath() else { return }
        let base = Self.scratch("base.qcow2"), top = Self.scratch("top.qcow2")
        defer { unlink(base); unlink(top) }
        try Qcow2Image.create(file: PosixFile(path: base, writable: true, create: true), options: Qcow2CreateOptions(size: 8 << 20))
        var options = Qcow2CreateOptions(size: 8 << 20)
        options.backingFile = base
        options.backingFormat = .qcow2
        try Qcow2Image.create(file: PosixFile(path: top, writable: true, create: true), options: options)
        let image = try openImage(path: top, format: .qcow2, writable: true, cache: .none)
        let data = [UInt8](repeating: 0x5A, count: 1536)
        try data.withUnsafeBytes { try image.write(at: 4096 * 3 + 512, from: $0) }
        try image.flush()
        var read = [UInt8](repeating: 0, count: 1536)
        try read.withUnsafeMutableBytes { try image.read(at: 4096 * 3 + 512, into: $0) }
        #expect(read == data)
        let check = Process()
        check.executableURL = URL(fileURLWithPath: qemuImg)
        check.arguments = ["check", "-U", top]
        try check.run()
        check.waitUntilExit()
        #expect(check.terminationStatus == 0)
    }
}

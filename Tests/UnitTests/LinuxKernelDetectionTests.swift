import Glibc
import Testing
@testable import VMM

/// Which kernels get `noxsave` on software-virtualisation hosts: Linux only.
@Suite struct LinuxKernelDetectionTests {
    /// A minimal ELF64 x86-64 executable with one PT_NOTE segment holding one note.
    static func elf(noteName: String, noteType: UInt32, description: [UInt8]) -> [UInt8] {
        func le16(_ value: UInt16) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
        func le32(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
        func le64(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
        func padded(_ bytes: [UInt8]) -> [UInt8] { bytes + [UInt8](repeating: 0, count: (4 - bytes.count % 4) % 4) }
        let name = Array(noteName.utf8) + [0]
        let note = le32(UInt32(name.count)) + le32(UInt32(description.count)) + le32(noteType) + padded(name) + padded(description)
        let noteOffset: UInt64 = 64 + 56
        var header: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        header += le16(2) + le16(62) + le32(1) + le64(0x100000) + le64(64) + le64(0) + le32(0)
        header += le16(64) + le16(56) + le16(1) + le16(0) + le16(0) + le16(0)
        let program = le32(4) + le32(4) + le64(noteOffset) + le64(0) + le64(0) + le64(UInt64(note.count)) + le64(UInt64(note.count)) + le64(4)
        return header + program + note
    }

    static func isLinux(_ bytes: [UInt8]) throws -> Bool {
        let path = "/tmp/tern-kernel-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(descriptor >= 0)
        _ = write(descriptor, bytes, bytes.count)
        close(descriptor)
        defer { unlink(path) }
        return HostFiles.isLinuxKernel(path)
    }

    @Test func anELFWithLinuxsNoteIsLinux() throws {
        #expect(try Self.isLinux(Self.elf(noteName: "Linux", noteType: 0x100, description: [1, 2, 3, 4])))
        #expect(try Self.isLinux(Self.elf(noteName: "Xen", noteType: 6, description: Array("linux".utf8) + [0])))
    }

    @Test func anELFWithOnlyThePVHNoteIsNotLinux() throws {
        #expect(try !Self.isLinux(Self.elf(noteName: "Xen", noteType: 18, description: [0x40, 0, 0x10, 0])))
        #expect(try !Self.isLinux(Self.elf(noteName: "Xen", noteType: 6, description: Array("netbsd".utf8) + [0])))
    }

    @Test func aBzImageIsLinux() throws {
        var image = [UInt8](repeating: 0, count: 0x400)
        image.replaceSubrange(0x202..<0x206, with: Array("HdrS".utf8))
        image[0x206] = 0x0F
        image[0x207] = 0x02
        #expect(try Self.isLinux(image))
    }

    @Test func unreadableOrForeignFilesAreNotLinux() throws {
        #expect(!HostFiles.isLinuxKernel("/nonexistent/vmlinux"))
        #expect(try !Self.isLinux(Array(repeating: 0x42, count: 4096)))
    }
}

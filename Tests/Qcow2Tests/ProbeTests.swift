import Foundation
import Qcow2
import Testing

@Suite("format probing: raw images cannot turn into other formats, other formats are refused by name", .serialized)
struct ProbeTests {
    /// First-sector contents that would make an image probe as another format.
    static let signatures: [(String, [UInt8], Int)] = [
        ("qcow2", [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3], 0),
        ("VMDK", Array("KDMV".utf8), 0),
        ("VMDK", Array("# Disk DescriptorFile\nversion=1\n".utf8), 0),
        ("VHD", Array("conectix".utf8), 0),
        ("VHDX", Array("vhdxfile".utf8), 0),
        ("QED", [0x51, 0x45, 0x44, 0x00], 0),
        ("VDI", [0x7f, 0x10, 0xda, 0xbe], 0x40),
        ("LUKS", [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe], 0),
    ]

    func rawDisk(_ d: TempDir) -> String {
        let p = d.file("disk.img")
        writeFile(p, [UInt8](repeating: 0x11, count: 1 << 20))
        return p
    }

    @Test("a probed raw disk refuses first-sector writes that would change its format; an explicit one does not")
    func firstSectorGuard() throws {
        let d = TempDir()
        let p = rawDisk(d)
        let qcow2 = Self.signatures[0].1
        do {
            let probed = try openImage(path: p, writable: true)
            for (name, bytes, offset) in Self.signatures {
                #expect(throws: DiskError.refused("a write to the first sector of a raw image whose format was probed would make it probe as \(name); give format=raw to allow it")) {
                    try bytes.withUnsafeBytes { try probed.write(at: UInt64(offset), from: $0) }
                }
            }
            #expect(readFile(p) == [UInt8](repeating: 0x11, count: 1 << 20))
            // Ordinary first-sector writes pass, and so do writes elsewhere that carry a signature.
            let boot = [UInt8](repeating: 0x55, count: 512)
            try boot.withUnsafeBytes { try probed.write(at: 0, from: $0) }
            try qcow2.withUnsafeBytes { try probed.write(at: 4096, from: $0) }
            // A signature assembled piece by piece is caught at the piece that completes it, zeroes included.
            try [UInt8]([0x51, 0x46, 0x49]).withUnsafeBytes { try probed.write(at: 0, from: $0) }
            #expect(throws: DiskError.self) { try [UInt8]([0xfb]).withUnsafeBytes { try probed.write(at: 3, from: $0) } }
            try [UInt8]([0x51, 0x45, 0x44, 0x01]).withUnsafeBytes { try probed.write(at: 0, from: $0) }
            #expect(throws: DiskError.self) { try probed.writeZeroes(at: 3, length: 1) }
            #expect(throws: DiskError.self) { try probed.discard(at: 3, length: 1) }
            try probed.writeZeroes(at: 0, length: 4096)
        }
        // With the format given, the guest may write what it likes.
        let explicit = try openImage(path: p, format: .raw, writable: true)
        try qcow2.withUnsafeBytes { try explicit.write(at: 0, from: $0) }
        #expect(Array(readFile(p).prefix(4)) == Array(qcow2.prefix(4)))
    }

    @Test("VMDK, VHD, VHDX, QED and VDI files are refused by name, never read as raw", arguments: [
        ("vmdk", "VMDK", [String]()), ("vmdk", "VMDK", ["-o", "subformat=monolithicFlat"]), ("vpc", "VHD", []),
        ("vpc", "VHD", ["-o", "subformat=fixed"]), ("vhdx", "VHDX", []), ("qed", "QED", []), ("vdi", "VDI", []),
    ])
    func foreignFormats(qemuFormat: String, name: String, options: [String]) throws {
        let d = TempDir()
        let p = d.file("disk.\(qemuFormat)")
        #expect(qemuImg(["create", "-q", "-f", qemuFormat] + options + [p, "1M"]).status == 0)
        let message = "\(name) images are not supported; convert it with qemu-img convert -O qcow2"
        #expect(throws: DiskError.refused(message)) { _ = try openImage(path: p) }
        #expect(throws: DiskError.refused(message)) { _ = try openImage(path: p, writable: true) }
        for verb in [["info"], ["map"], ["convert", "-O", "raw"]] {
            var args = Array(verb.dropFirst()) + [p]
            if verb[0] == "convert" { args.append(d.file("out.raw")) }
            let r = tern(verb[0], args)
            #expect(r.status == 1)
            #expect(r.err == "tern: \(p): \(message)\n", "\(verb)")
        }
        // The format given explicitly is the user's choice, as in QEMU.
        _ = try openImage(path: p, format: .raw)
    }

    @Test("a probed raw image opened for writing warns once; read-only opens do not")
    func warning() throws {
        let d = TempDir()
        let p = rawDisk(d)
        let resize = tern("resize", [p, "+1M"])
        #expect(resize.status == 0)
        #expect(resize.err == "tern: WARNING: \(p): format was not specified; probed as raw, writes to block 0 that would change the probed format are refused. Specify format=raw to remove the restriction.\n")
        #expect(readFile(p).count == 2 << 20)
        #expect(tern("resize", ["-f", "raw", p, "+1M"]).err == "")
        #expect(tern("info", [p]).err == "")
    }
}

@discardableResult
func qemuImg(_ args: [String]) -> ProcResult {
    guard let q = qemuImgPath() else { return ProcResult(status: -1, out: "", err: "qemu-img missing") }
    return run(q, args)
}

#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// What format probing reads: the first sector, where every format QEMU probes keeps its signature.
let probeSectorSize = 512

/// The image format a first sector announces other than raw, by the signatures QEMU's format probes look for;
/// nil for raw. The VHD footer at the end of a fixed-size VHD is checked separately (`vhdFooter`).
func announcedFormat(_ sector: UnsafeRawBufferPointer) -> String? {
    func starts(_ text: String, at offset: Int = 0) -> Bool {
        let bytes = Array(text.utf8)
        guard sector.count >= offset + bytes.count else { return false }
        for (i, b) in bytes.enumerated() where sector[offset + i] != b { return false }
        return true
    }
    func startsWithBytes(_ bytes: [UInt8], at offset: Int = 0) -> Bool {
        guard sector.count >= offset + bytes.count else { return false }
        for (i, b) in bytes.enumerated() where sector[offset + i] != b { return false }
        return true
    }
    if startsWithBytes([0x51, 0x46, 0x49, 0xfb]) { return "qcow2" }
    if starts("KDMV") || starts("COWD") || starts("# Disk DescriptorFile") { return "VMDK" }
    if starts("conectix") { return "VHD" }
    if starts("vhdxfile") { return "VHDX" }
    if startsWithBytes([0x51, 0x45, 0x44, 0x00]) { return "QED" }
    if startsWithBytes([0x7f, 0x10, 0xda, 0xbe], at: 0x40) { return "VDI" }
    if startsWithBytes([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]) { return "LUKS" }
    if starts("WithoutFreeSpace") || starts("WithouFreSpacExt") { return "Parallels" }
    if starts("Bochs Virtual HD Image") { return "Bochs" }
    if starts("#!/bin/sh\n#V2.0 Format\nmodprobe cloop") { return "cloop" }
    return nil
}

/// Whether the last sector of a file is a VHD footer (fixed-size VHDs have no header, only this footer).
func vhdFooter(_ file: any FileIO) throws(DiskError) -> Bool {
    let size = try file.size()
    guard size >= UInt64(probeSectorSize) else { return false }
    return try file.readBytes(at: size - UInt64(probeSectorSize), count: 8) == Array("conectix".utf8)
}

/// Detects the format of a file from its first bytes: qcow2 or raw. Formats Tern does not read (VMDK, VHD,
/// VHDX, QED, VDI, LUKS...) are refused by name rather than read as raw.
public func probeFormat(_ file: any FileIO) throws(DiskError) -> ImageFormat {
    let sector = try file.readBytes(at: 0, count: probeSectorSize)
    var name = sector.withUnsafeBytes { announcedFormat($0) }
    if name == nil, try vhdFooter(file) { name = "VHD" }
    switch name {
    case nil: return .raw
    case "qcow2": return .qcow2
    case let other?: throw .refused("\(other) images are not supported; convert it with qemu-img convert -O qcow2")
    }
}

/// The first-sector guard of a raw image whose format was probed rather than given: a guest write to the first
/// sector that would make the image probe as another format (a qcow2 header naming any host file as its backing
/// file, say) is refused, as QEMU refuses it. Giving the format explicitly removes the restriction.
final class ProbedRawGuard: Sendable {
    /// Serialises writes to the first sector, so that the sector checked is the sector written.
    private let firstSector = Mutex(())

    /// Whether a request at `offset` touches the first sector.
    @inline(__always) static func covers(_ offset: UInt64) -> Bool { offset < UInt64(probeSectorSize) }

    /// Applies `change` to a copy of the first sector of `device`; performs `operation` only if the result still
    /// probes as raw.
    func guarded(_ device: RawBackend, _ change: (UnsafeMutableRawBufferPointer) -> Void,
                 _ operation: () throws(DiskError) -> Void) throws(DiskError) {
        try firstSector.withLock { (_: inout ()) throws(DiskError) in
            var sector = [UInt8](repeating: 0, count: probeSectorSize)
            let formed = try rw(&sector) { (bytes) throws(DiskError) -> String? in
                try readClamped(device, at: 0, into: bytes)
                change(bytes)
                return announcedFormat(UnsafeRawBufferPointer(bytes))
            }
            if let format = formed {
                throw .refused("a write to the first sector of a raw image whose format was probed would make it probe as \(format); give format=raw to allow it")
            }
            try operation()
        }
    }

    /// The first-sector change of zeroing `length` bytes at `offset`.
    static func zeroing(_ offset: UInt64, _ length: UInt64) -> (UnsafeMutableRawBufferPointer) -> Void {
        { sector in
            let end = Int(min(UInt64(sector.count), offset + length))
            (sector.baseAddress! + Int(offset)).initializeMemory(as: UInt8.self, repeating: 0, count: end - Int(offset))
        }
    }

    /// The first-sector change of writing `buffer` at `offset`.
    static func writing(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) -> (UnsafeMutableRawBufferPointer) -> Void {
        { sector in
            let n = min(buffer.count, sector.count - Int(offset))
            (sector.baseAddress! + Int(offset)).copyMemory(from: buffer.baseAddress!, byteCount: n)
        }
    }
}

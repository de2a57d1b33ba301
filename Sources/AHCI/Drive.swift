import Qcow2

/// What a port has attached: an ATA disk or an ATAPI CD-ROM over a block backend.
public struct DriveConfiguration: Sendable {
    public enum Media: Sendable, Equatable {
        case disk
        case cdrom
    }

    public var media: Media
    public var backend: any BlockBackend
    /// Refuses writes; a CD-ROM is always read-only.
    public var readOnly: Bool
    /// IDENTIFY's serial number (at most 20 bytes) and model (at most 40).
    public var serial: String
    public var model: String

    public init(media: Media, backend: any BlockBackend, readOnly: Bool, serial: String, model: String? = nil) {
        self.media = media
        self.backend = backend
        self.readOnly = readOnly || media == .cdrom
        self.serial = serial
        self.model = model ?? (media == .disk ? "Tern SATA disk" : "Tern SATA DVD-ROM")
    }

    /// The signature the device reports after reset (PxSIG): ATA or ATAPI.
    var signature: UInt32 { media == .disk ? 0x0000_0101 : 0xEB14_0101 }
    /// Logical block size: 512 for disks, 2048 for CD-ROMs.
    var blockSize: Int { media == .disk ? 512 : 2048 }
    /// Whole blocks on the medium.
    var blockCount: UInt64 { backend.virtualSize / UInt64(blockSize) }
}

/// ATA status and error register bits (ATA8-ACS).
enum ATAStatus {
    static let error: UInt8 = 0x01
    static let seekComplete: UInt8 = 0x10
    static let ready: UInt8 = 0x40
    static let good: UInt8 = ready | seekComplete
}

enum ATAError {
    static let aborted: UInt8 = 0x04
    static let idNotFound: UInt8 = 0x10
    static let uncorrectable: UInt8 = 0x40
}

/// The end of one command: the bytes moved, or the error register's value (with the status's ERR bit set).
enum CommandOutcome: Equatable {
    case completed(bytes: Int)
    case failed(error: UInt8)
}

/// IDENTIFY DEVICE and IDENTIFY PACKET DEVICE data (ATA8-ACS 7.16, 7.17): 256 little-endian words.
enum IdentifyData {
    /// ATA strings are space-padded and byte-swapped within each word.
    static func put(_ text: String, words range: Range<Int>, into words: inout [UInt16]) {
        var bytes = Array(text.utf8.prefix(range.count * 2))
        bytes += repeatElement(0x20, count: range.count * 2 - bytes.count)
        for (index, word) in range.enumerated() { words[word] = UInt16(bytes[2 * index]) << 8 | UInt16(bytes[2 * index + 1]) }
    }

    static func bytes(_ words: [UInt16]) -> [UInt8] {
        var words = words
        var sum: UInt8 = 0xA5  // word 255: the signature byte, then the checksum that makes all 512 bytes sum to 0
        for word in words[0..<255] { sum &+= UInt8(truncatingIfNeeded: word) &+ UInt8(truncatingIfNeeded: word >> 8) }
        words[255] = UInt16(0 &- sum) << 8 | 0xA5
        return words.flatMap { [UInt8(truncatingIfNeeded: $0), UInt8(truncatingIfNeeded: $0 >> 8)] }
    }

    /// A SATA disk with 48-bit LBA, UDMA 0–6, NCQ of 32, a write cache and FLUSH CACHE EXT.
    static func disk(_ drive: DriveConfiguration) -> [UInt8] {
        var words = [UInt16](repeating: 0, count: 256)
        let sectors = drive.blockCount
        words[0] = 0x0040  // fixed device
        words[1] = UInt16(min(sectors / (16 * 63), 16383))
        words[3] = 16
        words[6] = 63
        put(drive.serial, words: 10..<20, into: &words)
        put("1.0", words: 23..<27, into: &words)
        put(drive.model, words: 27..<47, into: &words)
        words[47] = 0x8010  // 16 sectors per DRQ block
        words[49] = 0x0300  // LBA and DMA
        words[53] = 0x0006  // words 64-70 and 88 are valid
        words[54] = words[1]
        words[55] = 16
        words[56] = 63
        words[59] = 0x0110
        words[60] = UInt16(truncatingIfNeeded: min(sectors, 0x0FFF_FFFF))
        words[61] = UInt16(truncatingIfNeeded: min(sectors, 0x0FFF_FFFF) >> 16)
        words[63] = 0x0007  // multiword DMA 0-2
        words[64] = 0x0003  // PIO 3-4
        words[65] = 120
        words[66] = 120
        words[67] = 120
        words[68] = 120
        words[75] = 31  // queue depth 32
        words[76] = 0x0106  // SATA Gen 1 and 2, NCQ
        words[80] = 0x01F0  // ATA/ATAPI-4 to 8
        words[82] = 0x4020  // write cache
        words[83] = 0x7400  // 48-bit, FLUSH CACHE EXT, FLUSH CACHE
        words[84] = 0x4000
        words[85] = 0x4020
        words[86] = 0x3400
        words[87] = 0x4000
        words[88] = 0x203F  // UDMA 0-6 supported, UDMA 5 selected
        for index in 0..<4 { words[100 + index] = UInt16(truncatingIfNeeded: sectors >> (16 * UInt64(index))) }
        return bytes(words)
    }

    /// An ATAPI CD-ROM (removable, 12-byte packets, DMA).
    static func cdrom(_ drive: DriveConfiguration) -> [UInt8] {
        var words = [UInt16](repeating: 0, count: 256)
        words[0] = 0x85C0  // ATAPI, CD-ROM, removable, 12-byte packets
        put(drive.serial, words: 10..<20, into: &words)
        put("1.0", words: 23..<27, into: &words)
        put(drive.model, words: 27..<47, into: &words)
        words[49] = 0x0F00  // DMA, LBA, IORDY
        words[53] = 0x0006
        words[63] = 0x0007
        words[64] = 0x0003
        words[65] = 120
        words[66] = 120
        words[67] = 120
        words[68] = 120
        words[71] = 30
        words[72] = 30
        words[80] = 0x01F0
        words[88] = 0x203F
        return bytes(words)
    }
}

// Persistent dirty bitmaps in qcow2 (QEMU docs/interop/qcow2.rst, "Bitmaps extension"): the header extension
// points at a bitmap directory; each entry points at a bitmap table whose entries point at clusters of bits.

/// One entry of the bitmap directory.
public struct Qcow2Bitmap: Sendable, Equatable {
    public var name: String
    /// Offset of the bitmap table (cluster aligned).
    public var tableOffset: UInt64
    /// Entries in the bitmap table.
    public var tableSize: UInt32
    /// Bit 0 in use (inconsistent), bit 1 auto (enabled: tracks writes), bit 2 extra data compatible.
    public var flags: UInt32
    public var granularityBits: UInt8
    /// Extra data, preserved as read.
    public var extraData: [UInt8] = []

    public static let flagInUse: UInt32 = 1 << 0
    public static let flagAuto: UInt32 = 1 << 1
    public static let flagExtraDataCompatible: UInt32 = 1 << 2

    public var granularity: UInt64 { UInt64(1) << UInt64(granularityBits) }
    public var isEnabled: Bool { flags & Self.flagAuto != 0 }
    public var isInUse: Bool { flags & Self.flagInUse != 0 }

    /// Bytes of bits for a disk of `size` bytes.
    static func bitmapBytes(size: UInt64, granularity: UInt64) -> UInt64 { divRoundUp(divRoundUp(size, granularity), 8) }

    /// Bytes of this entry in the directory.
    var entrySize: Int { Self.entrySize(nameLength: name.utf8.count, extraLength: extraData.count) }
    static func entrySize(nameLength: Int, extraLength: Int) -> Int { (24 + nameLength + extraLength + 7) & ~7 }
}

/// The bitmaps extension of a header: where the directory is and how many entries it holds.
struct BitmapsExtension: Equatable {
    var count: UInt32
    var directorySize: UInt64
    var directoryOffset: UInt64

    static let maxBitmaps: UInt32 = 65535
    static let maxDirectorySize: UInt64 = 64 << 20
    static let maxNameSize = 1023
    static let maxTableEntries: UInt32 = 0x0800_0000

    init(count: UInt32, directorySize: UInt64, directoryOffset: UInt64) {
        self.count = count
        self.directorySize = directorySize
        self.directoryOffset = directoryOffset
    }

    init?(_ header: Qcow2Header) throws(DiskError) {
        guard let data = header.otherExtensions.first(where: { $0.type == QC.extBitmaps })?.data else { return nil }
        guard data.count >= 24 else { throw .corrupt("bitmaps extension is \(data.count) bytes, shorter than 24") }
        count = be32(data, 0)
        directorySize = be64(data, 8)
        directoryOffset = be64(data, 16)
        guard be32(data, 4) == 0 else { throw .corrupt("bitmaps extension has reserved bits set") }
    }

    var bytes: [UInt8] {
        var b = [UInt8]()
        b.append32(count)
        b.append32(0)
        b.append64(directorySize)
        b.append64(directoryOffset)
        return b
    }
}

/// The persistent bitmaps of an image, as its header and directory describe them. Empty when the image has
/// none, or when the autoclear bit is clear (a writer that does not know bitmaps touched the image: they are stale).
func readBitmapDirectory(_ file: any FileIO, header h: Qcow2Header) throws(DiskError) -> [Qcow2Bitmap] {
    guard h.version >= 3, h.autoclearFeatures & QC.autoclearBitmaps != 0, let ext = try BitmapsExtension(h) else { return [] }
    guard ext.count > 0 else { return [] }
    guard ext.count <= BitmapsExtension.maxBitmaps, ext.directorySize <= BitmapsExtension.maxDirectorySize,
          ext.directoryOffset % h.clusterSize == 0, ext.directoryOffset != 0 else {
        throw .corrupt("bitmap directory (\(ext.count) entries, \(ext.directorySize) bytes at \(hex(ext.directoryOffset))) is invalid")
    }
    let fileSize = try file.size()
    guard ext.directoryOffset <= fileSize, ext.directorySize <= fileSize - ext.directoryOffset else {
        throw .corrupt("bitmap directory at \(hex(ext.directoryOffset)) lies outside the file")
    }
    let dir = try file.readBytes(at: ext.directoryOffset, count: Int(ext.directorySize))
    var out: [Qcow2Bitmap] = []
    var off = 0
    for i in 0..<Int(ext.count) {
        guard off + 24 <= dir.count else { throw .corrupt("bitmap directory entry \(i) lies past the directory's end") }
        let nameSize = Int(be16(dir, off + 18)), extraSize = Int(be32(dir, off + 20))
        guard nameSize > 0, nameSize <= BitmapsExtension.maxNameSize, extraSize <= 1 << 20,
              off + 24 + extraSize + nameSize <= dir.count else {
            throw .corrupt("bitmap directory entry \(i) has an invalid name or extra data size")
        }
        let b = Qcow2Bitmap(
            name: String(decoding: dir[(off + 24 + extraSize)..<(off + 24 + extraSize + nameSize)], as: UTF8.self),
            tableOffset: be64(dir, off), tableSize: be32(dir, off + 8), flags: be32(dir, off + 12),
            granularityBits: dir[off + 17], extraData: Array(dir[(off + 24)..<(off + 24 + extraSize)]))
        guard dir[off + 16] == 1 else { throw .corrupt("bitmap '\(b.name)' has type \(dir[off + 16]), not a dirty tracking bitmap") }
        guard (9...31).contains(b.granularityBits) else { throw .corrupt("bitmap '\(b.name)' has granularity bits \(b.granularityBits)") }
        guard b.tableOffset % h.clusterSize == 0, b.tableSize <= BitmapsExtension.maxTableEntries,
              b.tableOffset <= fileSize, UInt64(b.tableSize) * 8 <= fileSize - b.tableOffset else {
            throw .corrupt("bitmap '\(b.name)' has an invalid bitmap table")
        }
        out.append(b)
        off += b.entrySize
    }
    return out
}

/// Bytes `measure` reserves for the source's persistent bitmaps in a new image of `clusterSize` clusters:
/// every bitmap fully allocated, its table, and the directory.
func persistentBitmapBytes(_ image: Qcow2Image, clusterSize cs: UInt64) throws(DiskError) -> UInt64 {
    var total: UInt64 = 0, directory: UInt64 = 0
    for b in try image.bitmaps {
        let clusters = divRoundUp(Qcow2Bitmap.bitmapBytes(size: image.virtualSize, granularity: b.granularity), cs)
        total += clusters * cs + roundUp(clusters * 8, cs)
        directory += UInt64(Qcow2Bitmap.entrySize(nameLength: b.name.utf8.count, extraLength: 0))
    }
    return total + roundUp(directory, cs)
}

extension Qcow2Image {
    /// The image's persistent dirty bitmaps.
    public var bitmaps: [Qcow2Bitmap] {
        get throws(DiskError) { try readBitmapDirectory(file, header: header) }
    }
}

/// `format-specific` `bitmaps` entries as qemu-img info lists them.
func bitmapsJSON(_ bitmaps: [Qcow2Bitmap]) -> JSON {
    .array(bitmaps.map { b in
        var flags: [JSON] = []
        if b.isInUse { flags.append(.string("in-use")) }
        if b.isEnabled { flags.append(.string("auto")) }
        return .object([("flags", .array(flags)), ("name", .string(b.name)), ("granularity", .uint(b.granularity))])
    })
}

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

    /// `bitmapBytes`, or nil above QEMU's limit for one bitmap (BME_MAX_PHYS_SIZE), so that a large disk, a fine
    /// granularity or a hostile directory never makes Tern allocate more than that for the bits.
    static func boundedBitmapBytes(size: UInt64, granularity: UInt64) -> Int? {
        let n = bitmapBytes(size: size, granularity: granularity)
        return n <= BitmapsExtension.maxBitmapBytes ? Int(n) : nil
    }

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
    /// The most bytes of bits one bitmap may have (QEMU's BME_MAX_PHYS_SIZE).
    static let maxBitmapBytes: UInt64 = 0x2000_0000

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

// MARK: editing

/// One change to an image's persistent bitmaps, as `qemu-img bitmap` makes them.
public enum BitmapAction: Sendable, Equatable {
    /// A new, empty, enabled bitmap; granularity defaults to the cluster size (at least 4 KiB).
    case add(granularity: UInt64?)
    case remove
    /// Marks nothing dirty.
    case clear
    /// Tracks writes (the `auto` flag).
    case enable
    case disable
    /// Adds the dirty bits of bitmap `source`, of the image at `sourcePath` or of this image.
    case merge(source: String, sourcePath: String?)
    /// Marks a guest byte range dirty (for writers that track their own writes, such as migration).
    case markDirty(offset: UInt64, length: UInt64)
}

/// The operation names qemu-img uses in its error lines.
extension BitmapAction {
    public var operationName: String {
        switch self {
        case .add: return "add"
        case .remove: return "remove"
        case .clear: return "clear"
        case .enable: return "enable"
        case .disable: return "disable"
        case .merge: return "merge"
        case .markDirty: return "mark"
        }
    }
}

/// A bitmap being edited: its entry and, once loaded or changed, its bits (bit i of byte k covers
/// guest bytes [(8k + i) * granularity, (8k + i + 1) * granularity)).
struct EditedBitmap {
    var entry: Qcow2Bitmap
    var bits: [UInt8]?
    /// Whether the table and data must be written anew.
    var rewrite = false
}

/// Loads the bits of bitmap `b` of a disk of `size` bytes.
func readBitmapBits(_ file: any FileIO, _ b: Qcow2Bitmap, size: UInt64, clusterSize cs: UInt64) throws(DiskError) -> [UInt8] {
    guard let byteCount = Qcow2Bitmap.boundedBitmapBytes(size: size, granularity: b.granularity) else {
        throw .corrupt("bitmap '\(b.name)' is too large (granularity \(b.granularity) on a disk of \(size) bytes)")
    }
    guard UInt64(b.tableSize) >= divRoundUp(UInt64(byteCount), cs) else {
        throw .corrupt("bitmap '\(b.name)' has a table of \(b.tableSize) entries, too few for the disk")
    }
    var bits = [UInt8](repeating: 0, count: byteCount)
    let table = try file.readBytes(at: b.tableOffset, count: Int(b.tableSize) * 8)
    let fileSize = try file.size()
    var k = 0
    while k * Int(cs) < byteCount {
        let entry = be64(table, 8 * k)
        let offset = entry & QC.l2OffsetMask
        let start = k * Int(cs), n = min(Int(cs), byteCount - start)
        if offset == 0 {
            if entry & 1 != 0 { for i in start..<start + n { bits[i] = 0xff } }
        } else {
            guard offset % cs == 0, offset + cs <= fileSize + cs else {
                throw .corrupt("bitmap '\(b.name)' points at data outside the file (\(hex(offset)))")
            }
            let data = try file.readBytes(at: offset, count: n)
            bits.replaceSubrange(start..<start + n, with: data)
        }
        k += 1
    }
    return bits
}

/// The guest ranges bitmap `name` of the image at `path` marks dirty, merged and in order.
public func dirtyRanges(path: String, bitmap name: String) throws(DiskError) -> [Range<UInt64>] {
    let image = try openQcow2(path, writable: false, openBacking: false)
    guard let b = try image.bitmaps.first(where: { $0.name == name }) else { throw .invalidArgument("dirty bitmap '\(name)' not found") }
    let bits = try readBitmapBits(image.file, b, size: image.virtualSize, clusterSize: image.clusterSize)
    var out: [Range<UInt64>] = []
    for (k, byte) in bits.enumerated() where byte != 0 {
        for i in 0..<8 where byte & (1 << i) != 0 {
            let start = UInt64(8 * k + i) * b.granularity
            guard start < image.virtualSize else { break }
            let end = min(start + b.granularity, image.virtualSize)
            if let last = out.last, last.upperBound == start { out[out.count - 1] = last.lowerBound..<end } else { out.append(start..<end) }
        }
    }
    return out
}

/// The bitmaps after an edit, worked out in memory.
struct BitmapPlan {
    var list: [EditedBitmap]
    /// Bitmaps whose old tables and data are freed once the new directory is in place.
    var freed: [Qcow2Bitmap]
    /// The directory the header pointed at before.
    var oldExtension: BitmapsExtension?
}

/// Applies `actions`, in order, to bitmap `name` of the qcow2 image at `path`, then writes the bitmaps that changed,
/// a new directory and the header (new clusters first, the header last, old clusters freed after).
public func editBitmaps(path: String, name: String, _ actions: [BitmapAction]) throws(DiskError) {
    // Every action is checked and applied in memory first, through a read-only open that is closed again before
    // the writable one, so that nothing is written unless every action succeeds.
    var plan = try planBitmapEdit(path: path, name: name, actions)
    let image = try openQcow2(path, writable: true, openBacking: false)
    try image.meta.withLock { (m) throws(DiskError) in
        for i in plan.list.indices where plan.list[i].rewrite && plan.list[i].entry.tableOffset != 0 {
            plan.freed.append(plan.list[i].entry)
        }
        // Every cluster to be freed is checked before anything is written, so a damaged table refuses the edit.
        let freedClusters = try plan.freed.map { (b) throws(DiskError) in try m.bitmapDataClusters(b) }
        for i in plan.list.indices where plan.list[i].rewrite {
            let (offset, entries) = try m.writeBitmapData(plan.list[i].bits!)
            plan.list[i].entry.tableOffset = offset
            plan.list[i].entry.tableSize = entries
        }
        try m.writeBitmapDirectory(plan.list.map(\.entry))
        if let old = plan.oldExtension { try m.freeClusters(old.directoryOffset, bytes: old.directorySize) }
        for (b, clusters) in zip(plan.freed, freedClusters) { try m.freeBitmapData(b, clusters: clusters) }
        try m.syncAndClean()
    }
}

func planBitmapEdit(path: String, name: String, _ actions: [BitmapAction]) throws(DiskError) -> BitmapPlan {
    let current = try openQcow2(path, writable: false, openBacking: false)
    guard current.header.version >= 3 else {
        throw .unsupported("persistent bitmaps need compat=1.1; run `tern image amend -o compat=1.1` first")
    }
    let oldExtension = current.header.autoclearFeatures & QC.autoclearBitmaps != 0 ? try BitmapsExtension(current.header) : nil
    let size = current.virtualSize, cs = current.clusterSize
    var list = try current.bitmaps.map { EditedBitmap(entry: $0) }
    var freed: [Qcow2Bitmap] = []
    func bits(_ i: Int) throws(DiskError) -> [UInt8] {
        if let b = list[i].bits { return b }
        let b = try readBitmapBits(current.file, list[i].entry, size: size, clusterSize: cs)
        list[i].bits = b
        return b
    }
    for action in actions {
        let index = list.firstIndex { $0.entry.name == name }
        if case .add(let granularity) = action {
            guard index == nil else { throw .invalidArgument("Operation add on bitmap \(name) failed: Bitmap already exists: \(name)") }
            guard !name.isEmpty, name.utf8.count <= BitmapsExtension.maxNameSize else {
                throw .invalidArgument("bitmap names are 1 to \(BitmapsExtension.maxNameSize) bytes")
            }
            let g = granularity ?? max(4096, cs)
            guard g.nonzeroBitCount == 1, (512...(UInt64(1) << 31)).contains(g) else {
                throw .invalidArgument("Operation add on bitmap \(name) failed: Granularity must be power of 2 between 512 and 2^31")
            }
            guard list.count < Int(BitmapsExtension.maxBitmaps) else { throw .unsupported("more than \(BitmapsExtension.maxBitmaps) bitmaps") }
            guard let byteCount = Qcow2Bitmap.boundedBitmapBytes(size: size, granularity: g) else {
                throw .invalidArgument("Operation add on bitmap \(name) failed: Too large bitmap; use a larger granularity")
            }
            let entry = Qcow2Bitmap(name: name, tableOffset: 0, tableSize: 0, flags: Qcow2Bitmap.flagAuto,
                                    granularityBits: UInt8(g.trailingZeroBitCount))
            list.append(EditedBitmap(entry: entry, bits: [UInt8](repeating: 0, count: byteCount), rewrite: true))
            continue
        }
        guard let i = index else { throw .invalidArgument("Operation \(action.operationName) on bitmap \(name) failed: Dirty bitmap '\(name)' not found") }
        switch action {
        case .add: break
        case .remove:
            if list[i].entry.tableOffset != 0 { freed.append(list[i].entry) }
            list.remove(at: i)
        case .clear:
            guard let byteCount = Qcow2Bitmap.boundedBitmapBytes(size: size, granularity: list[i].entry.granularity) else {
                throw .corrupt("bitmap '\(name)' is too large (granularity \(list[i].entry.granularity) on a disk of \(size) bytes)")
            }
            list[i].bits = [UInt8](repeating: 0, count: byteCount)
            list[i].rewrite = true
        case .enable: list[i].entry.flags |= Qcow2Bitmap.flagAuto
        case .disable: list[i].entry.flags &= ~Qcow2Bitmap.flagAuto
        case .merge(let source, let sourcePath):
            let from: Qcow2Bitmap, sourceBits: [UInt8], sourceSize: UInt64
            if let sourcePath {
                let other = try openQcow2(sourcePath, writable: false, openBacking: false)
                guard let b = try other.bitmaps.first(where: { $0.name == source }) else {
                    throw .invalidArgument("Operation merge on bitmap \(name) failed: Dirty bitmap '\(source)' not found")
                }
                from = b
                sourceSize = other.virtualSize
                sourceBits = try readBitmapBits(other.file, b, size: sourceSize, clusterSize: other.clusterSize)
            } else {
                guard let j = list.firstIndex(where: { $0.entry.name == source }) else {
                    throw .invalidArgument("Operation merge on bitmap \(name) failed: Dirty bitmap '\(source)' not found")
                }
                from = list[j].entry
                sourceSize = size
                sourceBits = try bits(j)
            }
            var target = try bits(i)
            let g = list[i].entry.granularity
            for (k, byte) in sourceBits.enumerated() where byte != 0 {
                for b in 0..<8 where byte & (1 << b) != 0 {
                    let start = UInt64(8 * k + b) * from.granularity
                    guard start < min(size, sourceSize) else { break }
                    setBits(&target, granularity: g, from: start, to: min(start + from.granularity, size))
                }
            }
            list[i].bits = target
            list[i].rewrite = true
        case .markDirty(let offset, let length):
            guard offset <= size, length <= size - offset else { throw .outOfRange(offset: offset, length: length, size: size) }
            var target = try bits(i)
            setBits(&target, granularity: list[i].entry.granularity, from: offset, to: offset + length)
            list[i].bits = target
            list[i].rewrite = true
        }
    }
    return BitmapPlan(list: list, freed: freed, oldExtension: oldExtension)
}

extension Meta {
    /// Writes a new bitmap directory for `bitmaps` and points the header at it (or drops the extension and the
    /// autoclear bit when there are none).
    mutating func writeBitmapDirectory(_ bitmaps: [Qcow2Bitmap]) throws(DiskError) {
        var directory = [UInt8]()
        for b in bitmaps {
            directory.append64(b.tableOffset)
            directory.append32(b.tableSize)
            directory.append32(b.flags & ~Qcow2Bitmap.flagInUse)
            directory.append(1)
            directory.append(b.granularityBits)
            directory.append16(UInt16(b.name.utf8.count))
            directory.append32(UInt32(b.extraData.count))
            directory.append(contentsOf: b.extraData)
            directory.append(contentsOf: Array(b.name.utf8))
            directory.padTo8()
        }
        header.otherExtensions.removeAll { $0.type == QC.extBitmaps }
        if bitmaps.isEmpty {
            header.autoclearFeatures &= ~QC.autoclearBitmaps
        } else {
            let offset = try writeNewTable(directory)
            let ext = BitmapsExtension(count: UInt32(bitmaps.count), directorySize: UInt64(directory.count), directoryOffset: offset)
            header.otherExtensions.append((QC.extBitmaps, ext.bytes))
            header.autoclearFeatures |= QC.autoclearBitmaps
        }
        bitmapsValidOnDisk = !bitmaps.isEmpty
        try file.sync()
        try rewriteHeader()
        try file.sync()
    }
}

/// Sets the bits of a bitmap of granularity `g` that cover guest bytes [from, to).
func setBits(_ bits: inout [UInt8], granularity g: UInt64, from: UInt64, to: UInt64) {
    guard to > from else { return }
    var i = Int(from / g)
    let last = Int((to - 1) / g)
    while i <= last, i / 8 < bits.count {
        bits[i / 8] |= 1 << UInt8(i % 8)
        i += 1
    }
}

extension Meta {
    /// Writes bitmap bits into new clusters (all-zero clusters stay unallocated) and a new table for them.
    /// Returns the table's offset and entry count.
    mutating func writeBitmapData(_ bits: [UInt8]) throws(DiskError) -> (UInt64, UInt32) {
        let clusters = Int(divRoundUp(UInt64(bits.count), cs))
        var table = [UInt8]()
        for k in 0..<clusters {
            let slice = bits[(k * Int(cs))..<min((k + 1) * Int(cs), bits.count)]
            if slice.allSatisfy({ $0 == 0 }) {
                table.append64(0)
            } else {
                table.append64(try writeNewTable(Array(slice)))
            }
        }
        guard clusters > 0 else { return (0, 0) }
        return (try writeNewTable(table), UInt32(clusters))
    }

    /// Frees a bitmap's data clusters and table.
    /// The data clusters bitmap `b`'s table names, each checked to be cluster-aligned, inside the file and not the
    /// image's active metadata, so that a damaged or hostile table can never make an edit free another cluster.
    func bitmapDataClusters(_ b: Qcow2Bitmap) throws(DiskError) -> [UInt64] {
        guard b.tableOffset != 0, b.tableSize > 0 else { return [] }
        let table = try file.readBytes(at: b.tableOffset, count: Int(b.tableSize) * 8)
        let fileSize = try file.size()
        let metadata = buildMetadataMap()
        var clusters: [UInt64] = []
        for k in 0..<Int(b.tableSize) {
            let offset = be64(table, 8 * k) & QC.l2OffsetMask
            guard offset != 0 else { continue }
            guard offset % cs == 0, offset < fileSize, metadata.kind(overlapping: offset, cs) == nil else {
                throw .corrupt("bitmap '\(b.name)': table entry \(k) names cluster 0x\(String(offset, radix: 16)), which is not one of its data clusters; run `tern image check -r all`")
            }
            clusters.append(offset)
        }
        return clusters
    }

    /// Frees bitmap `b`'s data `clusters` (from `bitmapDataClusters`) and its table.
    mutating func freeBitmapData(_ b: Qcow2Bitmap, clusters: [UInt64]) throws(DiskError) {
        guard b.tableOffset != 0, b.tableSize > 0 else { return }
        for offset in clusters { try freeClusters(offset, bytes: cs) }
        try freeClusters(b.tableOffset, bytes: UInt64(b.tableSize) * 8)
    }
}

/// Every host range the valid persistent bitmaps occupy (directory, tables and data clusters), so that a
/// refcount check counts them as referenced, as QEMU's does.
func bitmapMetadataRanges(_ file: any FileIO, header h: Qcow2Header) throws(DiskError) -> [(offset: UInt64, length: UInt64)] {
    let bitmaps = try readBitmapDirectory(file, header: h)
    guard !bitmaps.isEmpty, let ext = try BitmapsExtension(h) else { return [] }
    var out: [(offset: UInt64, length: UInt64)] = [(ext.directoryOffset, ext.directorySize)]
    for b in bitmaps where b.tableSize > 0 {
        out.append((b.tableOffset, UInt64(b.tableSize) * 8))
        let table = try file.readBytes(at: b.tableOffset, count: Int(b.tableSize) * 8)
        for k in 0..<Int(b.tableSize) {
            let offset = be64(table, 8 * k) & QC.l2OffsetMask
            if offset != 0 { out.append((offset, h.clusterSize)) }
        }
    }
    return out
}

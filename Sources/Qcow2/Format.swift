// qcow2 on-disk structures (QEMU docs/interop/qcow2.rst). All integers are big-endian.

@usableFromInline enum QC {
    static let magic: UInt32 = 0x5146_49fb
    static let l1OffsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let l1ReservedMask: UInt64 = 0x7f00_0000_0000_01ff
    static let l2OffsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let l2StdReservedMask: UInt64 = 0x3f00_0000_0000_01fe
    static let rtOffsetMask: UInt64 = 0xffff_ffff_ffff_fe00
    static let rtReservedMask: UInt64 = 0x1ff
    static let copied: UInt64 = 1 << 63
    static let compressed: UInt64 = 1 << 62
    static let zero: UInt64 = 1

    static let incompatDirty: UInt64 = 1 << 0
    static let incompatCorrupt: UInt64 = 1 << 1
    static let incompatDataFile: UInt64 = 1 << 2
    static let incompatCompression: UInt64 = 1 << 3
    static let incompatExtendedL2: UInt64 = 1 << 4
    static let incompatKnown: UInt64 = 0x1f
    static let compatLazyRefcounts: UInt64 = 1 << 0
    static let autoclearBitmaps: UInt64 = 1 << 0
    static let autoclearDataFileRaw: UInt64 = 1 << 1

    static let extEnd: UInt32 = 0
    static let extBackingFormat: UInt32 = 0xe279_2aca
    static let extFeatureTable: UInt32 = 0x6803_f857
    static let extBitmaps: UInt32 = 0x2385_2875
    static let extCrypto: UInt32 = 0x0537_be77
    static let extDataFile: UInt32 = 0x4441_5441

    // Sanity limits (the same order as QEMU's) so hostile images cannot make us allocate without bound.
    static let maxL1Bytes: UInt64 = 32 << 20
    static let maxRefTableBytes: UInt64 = 8 << 20
    static let maxSnapshots: UInt32 = 65536
    static let maxSnapshotTableBytes: UInt64 = 64 << 20
    static let maxSnapshotExtra: UInt32 = 1024
    static let maxVirtualSize: UInt64 = 1 << 56
}

// MARK: big-endian helpers

@inline(__always) func be64(_ b: UnsafeRawBufferPointer, _ o: Int) -> UInt64 {
    UInt64(bigEndian: b.loadUnaligned(fromByteOffset: o, as: UInt64.self))
}
@inline(__always) func be32(_ b: UnsafeRawBufferPointer, _ o: Int) -> UInt32 {
    UInt32(bigEndian: b.loadUnaligned(fromByteOffset: o, as: UInt32.self))
}
@inline(__always) func be16(_ b: UnsafeRawBufferPointer, _ o: Int) -> UInt16 {
    UInt16(bigEndian: b.loadUnaligned(fromByteOffset: o, as: UInt16.self))
}
func be64(_ a: [UInt8], _ o: Int) -> UInt64 { a.withUnsafeBytes { be64($0, o) } }
func be32(_ a: [UInt8], _ o: Int) -> UInt32 { a.withUnsafeBytes { be32($0, o) } }
func be16(_ a: [UInt8], _ o: Int) -> UInt16 { a.withUnsafeBytes { be16($0, o) } }

extension Array where Element == UInt8 {
    mutating func put64(_ v: UInt64, at o: Int) { for i in 0..<8 { self[o + i] = UInt8(truncatingIfNeeded: v >> (56 - 8 * i)) } }
    mutating func put32(_ v: UInt32, at o: Int) { for i in 0..<4 { self[o + i] = UInt8(truncatingIfNeeded: v >> (24 - 8 * i)) } }
    mutating func put16(_ v: UInt16, at o: Int) { self[o] = UInt8(v >> 8); self[o + 1] = UInt8(truncatingIfNeeded: v) }
    mutating func append64(_ v: UInt64) { for i in 0..<8 { append(UInt8(truncatingIfNeeded: v >> (56 - 8 * i))) } }
    mutating func append32(_ v: UInt32) { for i in 0..<4 { append(UInt8(truncatingIfNeeded: v >> (24 - 8 * i))) } }
    mutating func append16(_ v: UInt16) { append(UInt8(v >> 8)); append(UInt8(truncatingIfNeeded: v)) }
    mutating func padTo8() { while count % 8 != 0 { append(0) } }
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

// MARK: header

public struct FeatureName: Sendable, Equatable {
    public var type: UInt8  // 0 incompatible, 1 compatible, 2 autoclear
    public var bit: UInt8
    public var name: String
}

public struct Qcow2Header: Sendable, Equatable {
    public var version: UInt32 = 3
    public var backingFileOffset: UInt64 = 0
    public var backingFileSize: UInt32 = 0
    public var clusterBits: UInt32 = 16
    public var size: UInt64 = 0
    public var cryptMethod: UInt32 = 0
    public var l1Size: UInt32 = 0
    public var l1TableOffset: UInt64 = 0
    public var refcountTableOffset: UInt64 = 0
    public var refcountTableClusters: UInt32 = 0
    public var nbSnapshots: UInt32 = 0
    public var snapshotsOffset: UInt64 = 0
    public var incompatibleFeatures: UInt64 = 0
    public var compatibleFeatures: UInt64 = 0
    public var autoclearFeatures: UInt64 = 0
    public var refcountOrder: UInt32 = 4
    public var headerLength: UInt32 = 112
    public var compressionType: UInt8 = 0
    public var backingFile: String? = nil
    public var backingFormat: String? = nil
    public var featureNames: [FeatureName] = []
    /// Extensions this engine does not interpret; written back unchanged.
    public var otherExtensions: [(type: UInt32, data: [UInt8])] = []

    public static func == (a: Qcow2Header, b: Qcow2Header) -> Bool {
        a.serializeFields() == b.serializeFields() && a.backingFile == b.backingFile
            && a.backingFormat == b.backingFormat
    }

    public var clusterSize: UInt64 { 1 << UInt64(clusterBits) }
    public var extendedL2: Bool { incompatibleFeatures & QC.incompatExtendedL2 != 0 }
    public var refcountBits: UInt32 { 1 << refcountOrder }
    /// Entries per L2 table.
    public var l2Entries: UInt64 { clusterSize / (extendedL2 ? 16 : 8) }
    public func l1EntriesNeeded(for size: UInt64) -> UInt64 {
        let coverage = clusterSize * l2Entries
        return (size + coverage - 1) / coverage
    }

    /// Parses and validates cluster 0. `fileSize` bounds every table, unless `lenient` (for `check`, which
    /// reports tables past the end of the file or an empty refcount table instead of refusing the image).
    public static func parse(_ buf: [UInt8], fileSize: UInt64, lenient: Bool = false) throws(DiskError) -> Qcow2Header {
        guard buf.count >= 72 else { throw .corrupt("file is too short for a qcow2 header (\(buf.count) bytes)") }
        guard be32(buf, 0) == QC.magic else { throw .corrupt("not a qcow2 image (bad magic)") }
        var h = Qcow2Header()
        h.version = be32(buf, 4)
        guard h.version == 2 || h.version == 3 else { throw .unsupported("qcow2 version \(h.version)") }
        h.backingFileOffset = be64(buf, 8)
        h.backingFileSize = be32(buf, 16)
        h.clusterBits = be32(buf, 20)
        guard (9...21).contains(h.clusterBits) else { throw .corrupt("cluster_bits \(h.clusterBits) outside 9...21") }
        h.size = be64(buf, 24)
        h.cryptMethod = be32(buf, 32)
        h.l1Size = be32(buf, 36)
        h.l1TableOffset = be64(buf, 40)
        h.refcountTableOffset = be64(buf, 48)
        h.refcountTableClusters = be32(buf, 56)
        h.nbSnapshots = be32(buf, 60)
        h.snapshotsOffset = be64(buf, 64)
        if h.version == 2 {
            h.headerLength = 72
            h.refcountOrder = 4
        } else {
            guard buf.count >= 104 else { throw .corrupt("file is too short for a v3 header") }
            h.incompatibleFeatures = be64(buf, 72)
            h.compatibleFeatures = be64(buf, 80)
            h.autoclearFeatures = be64(buf, 88)
            h.refcountOrder = be32(buf, 96)
            h.headerLength = be32(buf, 100)
            guard h.headerLength >= 104, h.headerLength % 8 == 0 || h.headerLength == 104,
                UInt64(h.headerLength) <= h.clusterSize, Int(h.headerLength) <= buf.count
            else { throw .corrupt("header_length \(h.headerLength) is invalid") }
            if h.headerLength > 104 { h.compressionType = buf[104] }
        }
        let cs = h.clusterSize
        guard h.refcountOrder <= 6 else { throw .corrupt("refcount_order \(h.refcountOrder) is above 6") }
        if h.incompatibleFeatures & ~QC.incompatKnown != 0 {
            throw .unsupported("unknown incompatible feature bits \(hex(h.incompatibleFeatures & ~QC.incompatKnown))")
        }
        if h.incompatibleFeatures & QC.incompatDataFile != 0 {
            throw .unsupported("external data files (incompatible feature bit 2)")
        }
        if h.incompatibleFeatures & QC.incompatCompression != 0 {
            guard h.compressionType == 1 else { throw .corrupt("compression type bit set but compression_type is \(h.compressionType)") }
        } else if h.compressionType != 0 {
            throw .corrupt("compression_type \(h.compressionType) without the compression type feature bit")
        }
        if h.extendedL2 && h.clusterBits < 14 { throw .corrupt("extended L2 entries need clusters of at least 16 KiB") }
        guard h.cryptMethod == 0 else { throw .unsupported("encrypted images (crypt_method \(h.cryptMethod))") }
        guard h.size <= QC.maxVirtualSize else { throw .corrupt("virtual size \(h.size) is too large") }
        // L1
        guard h.l1TableOffset % cs == 0 else { throw .corrupt("L1 table offset \(hex(h.l1TableOffset)) is not cluster aligned") }
        guard UInt64(h.l1Size) * 8 <= QC.maxL1Bytes else { throw .corrupt("L1 table has \(h.l1Size) entries, above the limit") }
        guard UInt64(h.l1Size) >= h.l1EntriesNeeded(for: h.size) else { throw .corrupt("L1 table is too small for the virtual size") }
        if h.l1Size > 0 && !lenient {
            guard h.l1TableOffset != 0, h.l1TableOffset <= fileSize, UInt64(h.l1Size) * 8 <= fileSize - h.l1TableOffset
            else { throw .corrupt("L1 table at \(hex(h.l1TableOffset)) lies outside the file") }
        }
        // Refcount table
        guard h.refcountTableOffset % cs == 0, h.refcountTableOffset != 0 else {
            throw .corrupt("refcount table offset \(hex(h.refcountTableOffset)) is invalid")
        }
        guard h.refcountTableClusters > 0 || lenient, UInt64(h.refcountTableClusters) * cs <= QC.maxRefTableBytes else {
            throw .corrupt("refcount table size (\(h.refcountTableClusters) clusters) is invalid")
        }
        guard lenient || (h.refcountTableOffset <= fileSize && UInt64(h.refcountTableClusters) * cs <= fileSize + cs - h.refcountTableOffset) else {
            throw .corrupt("refcount table at \(hex(h.refcountTableOffset)) lies outside the file")
        }
        // Snapshots
        guard h.nbSnapshots <= QC.maxSnapshots else { throw .corrupt("too many snapshots (\(h.nbSnapshots))") }
        if h.nbSnapshots > 0 {
            guard h.snapshotsOffset % cs == 0, h.snapshotsOffset != 0, lenient || h.snapshotsOffset < fileSize else {
                throw .corrupt("snapshot table offset \(hex(h.snapshotsOffset)) is invalid")
            }
        }
        // Header extensions
        var off = Int(h.headerLength)
        let limit = min(buf.count, Int(cs))
        var sawEnd = false
        while off + 8 <= limit {
            let type = be32(buf, off)
            let len = Int(be32(buf, off + 4))
            off += 8
            if type == QC.extEnd { sawEnd = true; break }
            guard len <= limit - off else { throw .corrupt("header extension \(hex(UInt64(type))) overruns cluster 0") }
            let data = Array(buf[off..<off + len])
            switch type {
            case QC.extBackingFormat:
                h.backingFormat = String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
            case QC.extFeatureTable:
                var i = 0
                while i + 48 <= data.count {
                    let name = String(decoding: data[(i + 2)..<(i + 48)].prefix { $0 != 0 }, as: UTF8.self)
                    h.featureNames.append(FeatureName(type: data[i], bit: data[i + 1], name: name))
                    i += 48
                }
            default:
                h.otherExtensions.append((type, data))
            }
            off += (len + 7) & ~7
        }
        if h.version == 3 && !sawEnd && h.headerLength < limit {
            throw .corrupt("header extensions are not terminated")
        }
        if h.backingFileOffset != 0 {
            guard h.backingFileSize > 0, h.backingFileSize <= 1023,
                h.backingFileOffset <= UInt64(limit), UInt64(h.backingFileSize) <= UInt64(limit) - h.backingFileOffset
            else { throw .corrupt("backing file name lies outside cluster 0") }
            let s = Int(h.backingFileOffset)
            h.backingFile = String(decoding: buf[s..<s + Int(h.backingFileSize)], as: UTF8.self)
        }
        return h
    }

    func serializeFields() -> [UInt8] {
        var b = [UInt8]()
        b.append32(QC.magic)
        b.append32(version)
        b.append64(backingFileOffset)
        b.append32(backingFileSize)
        b.append32(clusterBits)
        b.append64(size)
        b.append32(cryptMethod)
        b.append32(l1Size)
        b.append64(l1TableOffset)
        b.append64(refcountTableOffset)
        b.append32(refcountTableClusters)
        b.append32(nbSnapshots)
        b.append64(snapshotsOffset)
        if version >= 3 {
            b.append64(incompatibleFeatures)
            b.append64(compatibleFeatures)
            b.append64(autoclearFeatures)
            b.append32(refcountOrder)
            b.append32(headerLength)
            if headerLength > 104 {
                b.append(compressionType)
                while b.count < Int(headerLength) { b.append(0) }
            }
        }
        return b
    }

    /// The names QEMU writes in the feature name table.
    static let standardFeatureNames: [FeatureName] = [
        FeatureName(type: 0, bit: 0, name: "dirty bit"),
        FeatureName(type: 0, bit: 1, name: "corrupt bit"),
        FeatureName(type: 0, bit: 2, name: "external data file"),
        FeatureName(type: 0, bit: 3, name: "compression type"),
        FeatureName(type: 0, bit: 4, name: "extended L2 entries"),
        FeatureName(type: 1, bit: 0, name: "lazy refcounts"),
        FeatureName(type: 2, bit: 0, name: "bitmaps"),
        FeatureName(type: 2, bit: 1, name: "raw external data"),
    ]

    /// Serializes the header, its extensions and the backing file name into cluster 0.
    /// Sets `backingFileOffset`/`backingFileSize`.
    public mutating func serialize() throws(DiskError) -> [UInt8] {
        if version == 2 {
            guard incompatibleFeatures == 0, refcountOrder == 4 else {
                throw .invalidArgument("qcow2 v2 images support neither feature bits nor refcount widths other than 16")
            }
        }
        var ext = [UInt8]()
        func addExt(_ type: UInt32, _ data: [UInt8]) {
            ext.append32(type)
            ext.append32(UInt32(data.count))
            ext.append(contentsOf: data)
            ext.padTo8()
        }
        if let f = backingFormat, backingFile != nil { addExt(QC.extBackingFormat, Array(f.utf8)) }
        if version >= 3 {
            var t = [UInt8]()
            let names = featureNames.isEmpty ? Self.standardFeatureNames : featureNames
            for n in names {
                t.append(n.type)
                t.append(n.bit)
                var nm = Array(n.name.utf8.prefix(46))
                while nm.count < 46 { nm.append(0) }
                t.append(contentsOf: nm)
            }
            addExt(QC.extFeatureTable, t)
        }
        for e in otherExtensions { addExt(e.type, e.data) }
        ext.append64(0)  // end marker (type 0, length 0)
        let fixedLen = version >= 3 ? Int(headerLength) : 72
        var name = [UInt8]()
        if let bf = backingFile {
            name = Array(bf.utf8)
            guard !name.isEmpty, name.count <= 1023 else { throw .invalidArgument("backing file name must be 1...1023 bytes") }
            backingFileOffset = UInt64(fixedLen + ext.count)
            backingFileSize = UInt32(name.count)
        } else {
            backingFileOffset = 0
            backingFileSize = 0
        }
        var b = serializeFields()
        b.append(contentsOf: ext)
        b.append(contentsOf: name)
        guard UInt64(b.count) <= clusterSize else {
            throw .invalidArgument("header, extensions and backing file name do not fit in one \(clusterSize)-byte cluster")
        }
        return b
    }
}

// MARK: snapshots

public struct Qcow2Snapshot: Sendable, Equatable {
    public var l1TableOffset: UInt64
    public var l1Size: UInt32
    public var id: String
    public var name: String
    public var dateSec: UInt32
    public var dateNsec: UInt32
    public var vmClockNsec: UInt64
    public var vmStateSize: UInt64
    public var diskSize: UInt64?
    public var icount: UInt64?
    /// Extra data past the fields we know, preserved.
    public var extraTail: [UInt8] = []

    /// Reads the snapshot table. `lenient` (for `check`): an entry past the end of the file ends the table,
    /// reported in `problem` as QEMU reports it, with the entry's fixed part counted in `bytes`.
    static func parseTable(_ file: any FileIO, header h: Qcow2Header, fileSize: UInt64, lenient: Bool = false)
        throws(DiskError) -> (snapshots: [Qcow2Snapshot], bytes: UInt64, problem: String?) {
        var out: [Qcow2Snapshot] = []
        var off = h.snapshotsOffset
        let cs = h.clusterSize
        for i in 0..<Int(h.nbSnapshots) {
            if lenient && off + 40 > fileSize {
                return (out, off + 40 - h.snapshotsOffset, "ERROR snapshot table entry \(i) is incomplete")
            }
            guard off + 40 <= fileSize, off - h.snapshotsOffset + 40 <= QC.maxSnapshotTableBytes else {
                throw .corrupt("snapshot table entry \(i) lies outside the file")
            }
            let f = try file.readBytes(at: off, count: 40)
            let l1Off = be64(f, 0)
            let l1Size = be32(f, 8)
            let idLen = Int(be16(f, 12))
            let nameLen = Int(be16(f, 14))
            let extra = be32(f, 36)
            guard extra <= QC.maxSnapshotExtra else { throw .corrupt("snapshot \(i) has \(extra) bytes of extra data") }
            if h.version >= 3 && extra < 16 { throw .corrupt("snapshot \(i) lacks the v3 extra data") }
            let varLen = Int(extra) + idLen + nameLen
            guard off <= fileSize, 40 + UInt64(varLen) <= fileSize - off else { throw .corrupt("snapshot table entry \(i) lies outside the file") }
            let v = try file.readBytes(at: off + 40, count: varLen)
            guard l1Off % cs == 0, UInt64(l1Size) * 8 <= QC.maxL1Bytes, l1Off <= fileSize, UInt64(l1Size) * 8 <= fileSize - l1Off else {
                throw .corrupt("snapshot \(i) has an invalid L1 table (offset \(hex(l1Off)), \(l1Size) entries)")
            }
            var s = Qcow2Snapshot(
                l1TableOffset: l1Off, l1Size: l1Size,
                id: String(decoding: v[Int(extra)..<Int(extra) + idLen], as: UTF8.self),
                name: String(decoding: v[(Int(extra) + idLen)...], as: UTF8.self),
                dateSec: be32(f, 16), dateNsec: be32(f, 20), vmClockNsec: be64(f, 24),
                vmStateSize: UInt64(be32(f, 32)))
            if extra >= 8 { s.vmStateSize = be64(v, 0) }
            if extra >= 16 { s.diskSize = be64(v, 8) }
            if extra >= 24 { s.icount = be64(v, 16) }
            if extra > 24 { s.extraTail = Array(v[24..<Int(extra)]) }
            out.append(s)
            off += UInt64(40 + varLen)
            off = (off + 7) & ~7
        }
        return (out, off - h.snapshotsOffset, nil)
    }

    static func serializeTable(_ list: [Qcow2Snapshot], version: UInt32) -> [UInt8] {
        var b = [UInt8]()
        for s in list {
            var extra = [UInt8]()
            if version >= 3 || s.diskSize != nil {
                extra.append64(s.vmStateSize)
                extra.append64(s.diskSize ?? 0)
                if let ic = s.icount {
                    extra.append64(ic)
                    extra.append(contentsOf: s.extraTail)
                }
            }
            let id = Array(s.id.utf8), name = Array(s.name.utf8)
            b.append64(s.l1TableOffset)
            b.append32(s.l1Size)
            b.append16(UInt16(id.count))
            b.append16(UInt16(name.count))
            b.append32(s.dateSec)
            b.append32(s.dateNsec)
            b.append64(s.vmClockNsec)
            b.append32(UInt32(truncatingIfNeeded: min(s.vmStateSize, UInt64(UInt32.max))))
            b.append32(UInt32(extra.count))
            b.append(contentsOf: extra)
            b.append(contentsOf: id)
            b.append(contentsOf: name)
            b.padTo8()
        }
        return b
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// Metadata a data write must never land on: the structures QEMU's qcow2 overlap check covers in its default
/// ("cached") mode (block/qcow2-refcount.c, qcow2_check_metadata_overlap).
enum MetadataKind: UInt8, Sendable, CustomStringConvertible {
    case header, activeL1, activeL2, refcountTable, refcountBlock, snapshotTable, inactiveL1, bitmapDirectory

    var description: String {
        switch self {
        case .header: return "qcow2 header"
        case .activeL1: return "active L1 table"
        case .activeL2: return "active L2 table"
        case .refcountTable: return "refcount table"
        case .refcountBlock: return "refcount block"
        case .snapshotTable: return "snapshot table"
        case .inactiveL1: return "inactive L1 table"
        case .bitmapDirectory: return "bitmap directory"
        }
    }
}

/// Host byte ranges holding metadata: sorted and disjoint, so that one binary search (no allocation) answers
/// whether a write would overlap any of them.
struct MetadataMap: Sendable {
    struct Range: Sendable {
        var start: UInt64
        var end: UInt64
        var kind: MetadataKind
    }
    private var ranges: [Range]

    /// Sorts `ranges`; where metadata overlaps other metadata (a corrupt image) the earlier range absorbs it.
    init(_ unsorted: [Range]) {
        var merged: [Range] = []
        merged.reserveCapacity(unsorted.count)
        for r in unsorted.sorted(by: { $0.start < $1.start }) where r.end > r.start {
            if let last = merged.last, r.start < last.end {
                merged[merged.count - 1].end = max(last.end, r.end)
            } else {
                merged.append(r)
            }
        }
        ranges = merged
    }

    /// Adds a table placed in new clusters. Returns false, leaving the map as it was, when the range overlaps
    /// one already there (the caller then rebuilds the map).
    mutating func insert(_ range: Range) -> Bool {
        let index = firstIndex(startingAtOrAfter: range.start)
        if index < ranges.count && ranges[index].start < range.end { return false }
        if index > 0 && ranges[index - 1].end > range.start { return false }
        ranges.insert(range, at: index)
        return true
    }

    /// Removes the table at exactly `start..<end`. Returns false, leaving the map as it was, when there is none.
    mutating func remove(start: UInt64, end: UInt64) -> Bool {
        let index = firstIndex(startingAtOrAfter: start)
        guard index < ranges.count, ranges[index].start == start, ranges[index].end == end else { return false }
        ranges.remove(at: index)
        return true
    }

    /// The index of the first range starting at or after `offset`.
    private func firstIndex(startingAtOrAfter offset: UInt64) -> Int {
        var low = 0, high = ranges.count
        while low < high {
            let mid = (low + high) / 2
            if ranges[mid].start < offset { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// The metadata `length` bytes at `offset` would overlap, if any.
    func kind(overlapping offset: UInt64, _ length: UInt64) -> MetadataKind? {
        let (end, overflow) = offset.addingReportingOverflow(length)
        let last = overflow ? UInt64.max : end
        // The last range starting before the write's end is the only candidate: earlier ones end before it starts.
        var low = 0, high = ranges.count
        while low < high {
            let mid = (low + high) / 2
            if ranges[mid].start < last { low = mid + 1 } else { high = mid }
        }
        guard low > 0, ranges[low - 1].end > offset else { return nil }
        return ranges[low - 1].kind
    }
}

extension Meta {
    /// Where the metadata lies now.
    func buildMetadataMap() -> MetadataMap {
        var ranges: [MetadataMap.Range] = []
        func add(_ offset: UInt64, _ bytes: UInt64, _ kind: MetadataKind) {
            guard offset != 0 || kind == .header, bytes > 0 else { return }
            let (end, overflow) = offset.addingReportingOverflow(bytes)
            ranges.append(MetadataMap.Range(start: offset, end: overflow ? UInt64.max : end, kind: kind))
        }
        add(0, cs, .header)
        add(header.l1TableOffset, UInt64(l1.count) * 8, .activeL1)
        for e in l1 { add(e & QC.l1OffsetMask, cs, .activeL2) }
        add(header.refcountTableOffset, UInt64(header.refcountTableClusters) * cs, .refcountTable)
        for e in refTable { add(e & QC.rtOffsetMask, cs, .refcountBlock) }
        if header.nbSnapshots > 0 { add(header.snapshotsOffset, snapshotTableBytes, .snapshotTable) }
        for s in snapshots { add(s.l1TableOffset, UInt64(s.l1Size) * 8, .inactiveL1) }
        // Stale bitmaps (autoclear bit cleared) keep their directory allocated: it is protected all the same.
        if let ext = try? BitmapsExtension(header), ext.count > 0 {
            add(ext.directoryOffset, ext.directorySize, .bitmapDirectory)
        }
        return MetadataMap(ranges)
    }

    /// Keeps the metadata map current when a table moves from `old` to `new` (0: none) without rebuilding it;
    /// drops it for a rebuild when the change is not a plain move (tables overlapping in a corrupt image).
    mutating func moveMetadata(from old: UInt64, to new: UInt64, bytes: UInt64, kind: MetadataKind) {
        guard var map = metadataMap else { return }
        // Unshared while it is edited, so that the edit does not copy it.
        metadataMap = nil
        if old != 0 && !map.remove(start: old, end: old + bytes) { return }
        if new != 0 && !map.insert(MetadataMap.Range(start: new, end: new + bytes, kind: kind)) { return }
        metadataMap = map
    }

    /// Called before guest data changes: refuses writes to an image marked corrupt, and invalidates the
    /// persistent bitmaps (which Tern does not maintain) on disk before the first write they would miss.
    @inline(__always) mutating func willWriteGuestData() throws(DiskError) {
        if markedCorrupt { throw .readOnly("the image was marked corrupt; writes are refused until `tern image check -r all` repairs it") }
        if bitmapsValidOnDisk { try invalidateBitmaps() }
    }

    /// Clears the bitmaps' autoclear bit on disk (QEMU then sees them as stale), durably.
    mutating func invalidateBitmaps() throws(DiskError) {
        header.autoclearFeatures &= ~QC.autoclearBitmaps
        var bytes = [UInt8]()
        bytes.append64(header.autoclearFeatures)
        try file.writeBytes(bytes, at: 88)
        try file.sync()
        bitmapsValidOnDisk = false
    }

    /// Checks that `length` bytes of data (or a table moving to a new place) at host `offset` overlap no
    /// metadata. On a hit the image is marked corrupt and the write fails, as QEMU's overlap check does.
    @inline(__always) mutating func checkOverlap(_ offset: UInt64, _ length: UInt64) throws(DiskError) {
        if metadataMap == nil { metadataMap = buildMetadataMap() }
        guard let kind = metadataMap!.kind(overlapping: offset, length) else { return }
        try markCorrupt("a write at host offset \(hex(offset)) would overwrite the \(kind)")
    }

    /// Sets the corrupt bit (on disk for v3 images), logs one line, and throws.
    mutating func markCorrupt(_ reason: String) throws(DiskError) -> Never {
        if !markedCorrupt {
            markedCorrupt = true
            header.incompatibleFeatures |= QC.incompatCorrupt
            if g.v3 {
                var bytes = [UInt8]()
                bytes.append64(header.incompatibleFeatures)
                try? file.writeBytes(bytes, at: 72)
                try? file.sync()
            }
            let line = "tern: \(name): marking the image corrupt: \(reason); further writes are refused\n"
            _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
        }
        throw .corrupt(reason)
    }
}

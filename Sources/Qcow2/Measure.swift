/// What `qemu-img measure` reports: the file size a new image needs.
public struct ImageMeasurement: Sendable, Equatable {
    /// Bytes the image needs for the data it will hold.
    public var required: UInt64
    /// Bytes the image needs with every cluster allocated.
    public var fullyAllocated: UInt64
    /// Bytes the source's persistent bitmaps need (reported for a qcow2 v3 output from a qcow2 source).
    public var bitmaps: UInt64?

    public var json: JSON {
        var fields: [(String, JSON)] = []
        if let b = bitmaps { fields.append(("bitmaps", .uint(b))) }
        fields += [("required", .uint(required)), ("fully-allocated", .uint(fullyAllocated))]
        return .object(fields)
    }

    public var human: String {
        "required size: \(required)\nfully allocated size: \(fullyAllocated)\n" + (bitmaps.map { "bitmaps size: \($0)\n" } ?? "")
    }
}

/// Measures an image `spec` describes, holding `source` (opened at `sourcePath`) or, without one, `spec.size` bytes.
/// The arithmetic is qemu's, so that the numbers are the same.
public func measure(_ spec: ImageSpec, source: (any BlockBackend)?, sourcePath: String?) throws(DiskError) -> ImageMeasurement {
    switch spec.format {
    case .raw:
        let required = source?.virtualSize ?? ((spec.size ?? 0) + 511) / 512 * 512
        return ImageMeasurement(required: required, fullyAllocated: required, bitmaps: nil)
    case .qcow2:
        let o = spec.qcow2
        guard o.clusterSize.nonzeroBitCount == 1, (512...(2 << 20)).contains(o.clusterSize) else {
            throw .invalidArgument("cluster size must be a power of two between 512 and 2097152 bytes")
        }
        guard o.refcountBits.nonzeroBitCount == 1, o.refcountBits <= 64 else {
            throw .invalidArgument("refcount bits must be a power of two between 1 and 64")
        }
        if o.version == 2 && o.refcountBits != 16 { throw .invalidArgument("compat=0.10 requires refcount_bits=16") }
        if o.extendedL2 && o.clusterSize < 16384 { throw .invalidArgument("extended L2 entries need clusters of at least 16 KiB") }
        let cs = o.clusterSize
        let entrySize: UInt64 = o.extendedL2 ? 16 : 8
        var virtualSize = roundUp(spec.size ?? 0, cs)
        let l2Tables = divRoundUp(virtualSize / cs, cs / entrySize)
        guard l2Tables * 8 <= QC.maxL1Bytes else { throw .invalidArgument("the image size is too large; use a larger cluster size") }
        var required: UInt64 = 0
        var bitmaps: UInt64? = nil
        if let source, let sourcePath {
            let sourceSize = source.virtualSize
            virtualSize = roundUp(sourceSize, cs)
            if o.backingFile != nil {
                // The new backing file may share nothing with the source: every cluster may need writing.
                required = virtualSize
            } else {
                required = try dataBytes(imageMap(device: source, path: sourcePath), size: sourceSize, clusterSize: cs)
            }
            if o.version >= 3, let q = source as? Qcow2Image { bitmaps = try persistentBitmapBytes(q, clusterSize: cs) }
        }
        if o.preallocation == .full { required = virtualSize }
        let full = qcow2FullSize(virtualSize, clusterSize: cs, refcountOrder: UInt64(o.refcountBits.trailingZeroBitCount),
                                 extendedL2: o.extendedL2)
        return ImageMeasurement(required: full - virtualSize + required, fullyAllocated: full, bitmaps: bitmaps)
    }
}

@inline(__always) func roundUp(_ v: UInt64, _ to: UInt64) -> UInt64 { (v + to - 1) / to * to }
@inline(__always) func divRoundUp(_ v: UInt64, _ by: UInt64) -> UInt64 { (v + by - 1) / by }

/// Data bytes the source holds, counted in whole output clusters the way qemu's measure walks block status.
func dataBytes(_ extents: [MapExtent], size: UInt64, clusterSize cs: UInt64) -> UInt64 {
    var required: UInt64 = 0
    var offset: UInt64 = 0
    var index = 0
    while offset < size, index < extents.count {
        let e = extents[index]
        let end = e.start + e.length
        if end <= offset { index += 1; continue }
        var length = end - offset
        if e.present && e.data {
            length = roundUp(offset + length, cs) - offset
            required += offset % cs + length
        }
        offset += length
    }
    return required
}

/// The size of a qcow2 image of `size` bytes with every cluster allocated: data, L2 and L1 tables, and the
/// refcount structures that count all of it, themselves included.
func qcow2FullSize(_ size: UInt64, clusterSize cs: UInt64, refcountOrder: UInt64, extendedL2: Bool) -> UInt64 {
    let entrySize: UInt64 = extendedL2 ? 16 : 8
    let aligned = roundUp(size, cs)
    var meta = cs  // header
    let l2Entries = roundUp(aligned / cs, cs / entrySize)
    meta += l2Entries * entrySize
    let l1Entries = roundUp(l2Entries * entrySize / cs, cs / 8)
    meta += l1Entries * 8
    meta += refcountMetadataBytes(clusters: (meta + aligned) / cs, clusterSize: cs, refcountOrder: refcountOrder)
    return meta + aligned
}

/// Refcount table and block bytes for `clusters` clusters: the fixed point where the blocks also count themselves.
func refcountMetadataBytes(clusters: UInt64, clusterSize cs: UInt64, refcountOrder: UInt64) -> UInt64 {
    let blocksPerTableCluster = cs / 8
    let refcountsPerBlock = cs * 8 / (1 << refcountOrder)
    var table: UInt64 = 0, blocks: UInt64 = 0, total: UInt64 = 0, last: UInt64
    repeat {
        last = total
        blocks = divRoundUp(clusters + table + blocks, refcountsPerBlock)
        table = divRoundUp(blocks, blocksPerTableCluster)
        total = clusters + blocks + table
    } while total != last
    return (blocks + table) * cs
}

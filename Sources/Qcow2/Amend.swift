/// Changes the options of an existing qcow2 image that qemu-img amend changes: `compat` (upgrade to 1.1),
/// `lazy_refcounts` and `size` (grow). Options fixed at creation are refused with one line each.
/// Persistent bitmaps stay valid (the image's data is not touched, except that a size change is refused with them).
public func amend(path: String, _ spec: ImageSpec, progress: ProgressMeter = ProgressMeter(.off)) throws(DiskError) {
    let current: Qcow2Header, bitmaps: [Qcow2Bitmap]
    do {
        let f = try PosixFile(path: path, writable: false)
        guard try probeFormat(f) == .qcow2 else { throw DiskError.unsupported("raw images have no options to amend") }
        var o = Qcow2OpenOptions()
        o.openBacking = false
        let image = try Qcow2Image(file: f, path: path, options: o)
        current = image.header
        bitmaps = try image.bitmaps
    }
    let upgrading = spec.given.contains("compat") && spec.qcow2.version == 3
    for key in spec.given {
        switch key {
        case "cluster_size", "extended_l2", "compression_type", "preallocation":
            throw .invalidArgument("'\(key)' can only be set when an image is created; convert to a new image to change it")
        case "backing_file", "backing_fmt":
            throw .invalidArgument("amend does not change the backing file; use `tern image rebase`")
        case "refcount_bits" where spec.qcow2.refcountBits != current.refcountBits:
            throw .unsupported("changing refcount_bits; convert to a new image with -o refcount_bits=\(spec.qcow2.refcountBits)")
        case "compat" where spec.qcow2.version == 2 && current.version >= 3:
            throw .unsupported("downgrading to compat=0.10; convert to a new image with -o compat=0.10")
        case "lazy_refcounts" where spec.qcow2.lazyRefcounts && current.version < 3 && !upgrading:
            throw .invalidArgument("lazy_refcounts=on needs compat=1.1; add -o compat=1.1")
        case "size" where (spec.size ?? 0) < current.size:
            throw .invalidArgument("amend does not shrink images; use `tern image resize --shrink`")
        case "size" where spec.size != current.size && !bitmaps.isEmpty:
            throw .unsupported("resizing an image with persistent bitmaps; remove them with `tern image bitmap --remove` first")
        default: break
        }
    }
    progress.update(0, of: 100)
    let image = try openQcow2(path, writable: true, openBacking: false)
    if spec.given.contains("size"), let size = spec.size, size != current.size { try image.resize(to: size) }
    try image.meta.withLock { (m) throws(DiskError) in
        if upgrading, m.header.version == 2 {
            // v3 snapshot entries carry the disk size: rewrite the table with it before the header says v3.
            if !m.snapshots.isEmpty {
                let size = m.header.size
                try m.replaceSnapshotTable(m.snapshots.map { var s = $0; s.diskSize = s.diskSize ?? size; return s })
            }
            m.header.version = 3
            m.header.headerLength = 112
        }
        if spec.given.contains("lazy_refcounts") {
            if spec.qcow2.lazyRefcounts { m.header.compatibleFeatures |= QC.compatLazyRefcounts }
            else { m.header.compatibleFeatures &= ~QC.compatLazyRefcounts }
        }
        try m.rewriteHeader()
        try m.syncAndClean()
    }
    progress.update(100, of: 100)
}

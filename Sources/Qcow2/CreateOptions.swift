/// What `tern image create`, `convert` and `amend` build, from flags and `-o key=value[,...]` as qemu-img takes them.
public struct ImageSpec: Sendable {
    public var format: ImageFormat
    /// The virtual size, once known.
    public var size: UInt64?
    /// qcow2 layout (its `size` is filled in from `size` when the image is made).
    public var qcow2 = Qcow2CreateOptions(size: 0)
    /// Compressed clusters use zstd instead of deflate (qcow2 `compression_type=zstd`).
    public var zstd = false
    /// Preallocation as given (`falloc` is reserved space, as Tern's `full`).
    public var preallocationName: String?
    /// The compat level as given, for the "Formatting" line (qemu-img shows it only when given).
    public var compatName: String?
    /// The `-o` options given, in order.
    public private(set) var given: [String] = []

    public init(format: ImageFormat) { self.format = format }

    /// The options qemu-img knows for `format`, with their help text.
    public static func options(for format: ImageFormat) -> [(name: String, type: String, help: String)] {
        switch format {
        case .raw:
            return [("preallocation", "str", "Preallocation mode (allowed values: off, falloc, full)"),
                    ("size", "size", "Virtual disk size")]
        case .qcow2:
            return [("backing_file", "str", "File name of a base image"),
                    ("backing_fmt", "str", "Image format of the base image"),
                    ("cluster_size", "size", "qcow2 cluster size"),
                    ("compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])"),
                    ("compression_type", "str", "Compression method used for image cluster compression"),
                    ("extended_l2", "bool (on/off)", "Extended L2 tables"),
                    ("lazy_refcounts", "bool (on/off)", "Postpone refcount updates"),
                    ("preallocation", "str", "Preallocation mode (allowed values: off, metadata, falloc, full)"),
                    ("refcount_bits", "num", "Width of a reference count entry in bits"),
                    ("size", "size", "Virtual disk size")]
        }
    }

    /// `-o help` output.
    public static func help(for format: ImageFormat) -> String {
        "Supported \(format.rawValue) options:\n" + options(for: format).map { "  " + padded("\($0.name)=<\($0.type)>", 22) + " - \($0.help)\n" }.joined()
    }

    /// Whether an `-o` string asks for the option list (`help` or `?` among its items).
    public static func wantsHelp(_ optionString: String) -> Bool {
        splitOptions(optionString).contains { $0 == "help" || $0 == "?" }
    }

    /// Applies `-o key=value[,...]` (a doubled comma is a literal comma).
    public mutating func apply(_ optionString: String) throws(DiskError) {
        let known = Set(Self.options(for: format).map(\.name))
        for item in Self.splitOptions(optionString) where !item.isEmpty {
            guard let eq = item.firstIndex(of: "=") else { throw .invalidArgument("option '\(item)' has no value; write \(item)=VALUE") }
            let key = String(item[..<eq]), value = String(item[item.index(after: eq)...])
            guard known.contains(key) else {
                throw .invalidArgument("invalid parameter '\(key)' for \(format.rawValue); `-o help` lists the options")
            }
            try set(key, value)
            given.append(key)
        }
    }

    /// Sets one option by its qemu-img name.
    public mutating func set(_ key: String, _ value: String) throws(DiskError) {
        switch key {
        case "size":
            guard let bytes = parseImageSize(value) else { throw .invalidArgument("invalid size '\(value)'; use bytes or a K/M/G/T suffix") }
            size = bytes
        case "compat":
            switch value {
            case "1.1", "v3": qcow2.version = 3
            case "0.10", "v2": qcow2.version = 2
            default: throw .invalidArgument("invalid compat value '\(value)'; use 1.1 or 0.10")
            }
            compatName = value
        case "backing_file": qcow2.backingFile = value.isEmpty ? nil : value
        case "backing_fmt":
            guard let f = ImageFormat(rawValue: value) else { throw .invalidArgument("unknown backing format '\(value)'; use raw or qcow2") }
            qcow2.backingFormat = f
        case "cluster_size":
            guard let bytes = parseImageSize(value) else { throw .invalidArgument("invalid cluster size '\(value)'") }
            qcow2.clusterSize = bytes
        case "preallocation":
            switch value {
            case "off": qcow2.preallocation = .off
            case "metadata" where format == .qcow2: qcow2.preallocation = .metadata
            case "falloc", "full": qcow2.preallocation = .full
            default: throw .invalidArgument("invalid preallocation '\(value)'; use off, \(format == .qcow2 ? "metadata, " : "")falloc or full")
            }
            preallocationName = value
        case "lazy_refcounts": qcow2.lazyRefcounts = try Self.bool(key, value)
        case "extended_l2": qcow2.extendedL2 = try Self.bool(key, value)
        case "refcount_bits":
            guard let bits = UInt32(value) else { throw .invalidArgument("invalid refcount_bits '\(value)'; use 1, 2, 4, 8, 16, 32 or 64") }
            qcow2.refcountBits = bits
        case "compression_type":
            switch value {
            case "zlib": zstd = false
            case "zstd": zstd = true
            default: throw .invalidArgument("invalid compression_type '\(value)'; use zlib or zstd")
            }
        default: throw .invalidArgument("invalid parameter '\(key)'; `-o help` lists the options")
        }
    }

    static func bool(_ key: String, _ value: String) throws(DiskError) -> Bool {
        switch value {
        case "on", "yes", "true": return true
        case "off", "no", "false": return false
        default: throw .invalidArgument("parameter '\(key)' expects on or off, not '\(value)'")
        }
    }

    static func splitOptions(_ s: String) -> [String] {
        var items: [String] = [], current = ""
        var chars = s.makeIterator()
        var pendingComma = false
        while let c = chars.next() {
            if pendingComma {
                pendingComma = false
                if c == "," { current.append(","); continue }
                items.append(current)
                current = ""
            }
            if c == "," { pendingComma = true } else { current.append(c) }
        }
        items.append(current)
        return items
    }

    /// The line qemu-img prints before creating an image.
    public func formattingLine(_ path: String) -> String {
        let sizeText = String(size ?? 0)
        switch format {
        case .raw:
            return "Formatting '\(path)', fmt=raw size=\(sizeText)" + (preallocationName.map { " preallocation=\($0)" } ?? "")
        case .qcow2:
            var s = "Formatting '\(path)', fmt=qcow2 cluster_size=\(qcow2.clusterSize) extended_l2=\(qcow2.extendedL2 ? "on" : "off")"
            if let p = preallocationName { s += " preallocation=\(p)" }
            s += " compression_type=\(zstd ? "zstd" : "zlib") size=\(sizeText)"
            if let b = qcow2.backingFile {
                s += " backing_file=\(b)"
                if let f = qcow2.backingFormat { s += " backing_fmt=\(f.rawValue)" }
            }
            if let c = compatName { s += " compat=\(c)" }
            return s + " lazy_refcounts=\(qcow2.lazyRefcounts ? "on" : "off") refcount_bits=\(qcow2.refcountBits)"
        }
    }
}

/// Parses sizes like 512, 64K, 10M, 2G, 1T (binary units; an optional B/iB suffix), as qemu-img takes them.
public func parseImageSize(_ s: String) -> UInt64? {
    var t = s.uppercased()
    if t.hasSuffix("IB") { t.removeLast(2) } else if t.hasSuffix("B") && t.count > 1 { t.removeLast() }
    var multiplier: UInt64 = 1
    if let last = t.last, let i = "KMGTPE".firstIndex(of: last) {
        multiplier = 1 << (10 * UInt64("KMGTPE".distance(from: "KMGTPE".startIndex, to: i) + 1))
        t.removeLast()
    }
    guard let v = UInt64(t) else { return nil }
    let (r, overflow) = v.multipliedReportingOverflow(by: multiplier)
    return overflow ? nil : r
}

/// Sets the compression type in a qcow2 image's header (the image must hold no compressed clusters yet).
func setCompressionType(zstd: Bool, in file: any FileIO) throws(DiskError) {
    try editHeader(file) { (h) throws(DiskError) in
        guard h.version >= 3 || !zstd else { throw .invalidArgument("compression_type=zstd needs compat=1.1") }
        h.compressionType = zstd ? 1 : 0
        if zstd { h.incompatibleFeatures |= QC.incompatCompression } else { h.incompatibleFeatures &= ~QC.incompatCompression }
        if h.headerLength < 112 { h.headerLength = 112 }
    }
}

/// Rewrites cluster 0 of a closed qcow2 image after `edit` changes its header.
func editHeader(_ file: any FileIO, _ edit: (inout Qcow2Header) throws(DiskError) -> Void) throws(DiskError) {
    let fileSize = try file.size()
    let first = try file.readBytes(at: 0, count: Int(min(fileSize, 4096)))
    guard first.count >= 24 else { throw .corrupt("file is too short for a qcow2 header") }
    let clusterBits = be32(first, 20)
    guard (9...21).contains(clusterBits) else { throw .corrupt("cluster_bits \(clusterBits) outside 9...21") }
    let cluster0 = try file.readBytes(at: 0, count: Int(min(fileSize, UInt64(1) << UInt64(clusterBits))))
    var header = try Qcow2Header.parse(cluster0, fileSize: fileSize)
    try edit(&header)
    var bytes = try header.serialize()
    // Cluster 0 holds only the header: clear what the old extensions and backing file name left beyond the new ones.
    if bytes.count < cluster0.count { bytes.append(contentsOf: repeatElement(0, count: cluster0.count - bytes.count)) }
    try file.writeBytes(bytes, at: 0)
    try file.sync()
}

/// Creates the image `spec` describes at `path` (see `writeOutput` for what happens to an existing path).
/// A missing size is taken from the backing file, which is opened to check it (and probe its format)
/// unless `openBacking` is false.
public func createImage(_ path: String, spec: inout ImageSpec, openBacking: Bool = true) throws(DiskError) {
    if spec.format == .raw, spec.qcow2.backingFile != nil {
        throw .invalidArgument("raw images cannot have a backing file; use -f qcow2")
    }
    if let name = spec.qcow2.backingFile, openBacking {
        let backingPath = resolveBacking(name, relativeTo: path)
        // openImage probes a format not given; the backend it opens says which it found.
        let backing = try openImage(path: backingPath, format: spec.qcow2.backingFormat)
        spec.qcow2.backingFormat = spec.qcow2.backingFormat ?? (backing is Qcow2Image ? .qcow2 : .raw)
        if spec.size == nil { spec.size = backing.virtualSize }
    }
    guard let size = spec.size else { throw .invalidArgument("a size is required; give it after the file name") }
    let options = spec
    try writeOutput(path, size: spec.format == .raw ? size : nil) { (out) throws(DiskError) in
        switch options.format {
        case .raw:
            if out.isDevice { return }
            try out.file.truncate(size)
            if options.qcow2.preallocation == .full && size > 0 { try out.file.allocate(at: 0, length: size) }
        case .qcow2:
            let file = try out.imageFile()
            var co = options.qcow2
            co.size = size
            try Qcow2Image.create(file: file, options: co)
            if options.zstd { try setCompressionType(zstd: true, in: file) }
        }
    }
}

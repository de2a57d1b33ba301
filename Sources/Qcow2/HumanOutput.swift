#if canImport(Glibc)
import Glibc
#endif

// The human-readable output of `tern image`, byte for byte as qemu-img prints it (qemu-img 7.2).

/// `printf`-style formatting of numbers through the C library, so that widths, rounding and `%g` match qemu-img.
public func cFormat(_ format: String, _ arguments: CVarArg...) -> String {
    withVaList(arguments) { list in
        var buffer = [CChar](repeating: 0, count: 512)
        let n = buffer.withUnsafeMutableBufferPointer { vsnprintf($0.baseAddress, $0.count, format, list) }
        return String(decoding: buffer.prefix(max(0, min(Int(n), buffer.count - 1))).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A size the way qemu prints one: three significant digits and a binary unit ("404 KiB", "1.5 GiB", "0 B").
public func humanSize(_ value: UInt64) -> String {
    let units = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
    let scaled = Double(value) / (1000.0 / 1024.0)
    // The binary exponent as frexp(3) gives it (0 for zero), then one unit per 10 bits.
    let exponent = scaled == 0 ? 0 : Int(scaled.exponent) + 1
    let unit = min(units.count - 1, (exponent - 1) / 10)
    return cFormat("%0.3g", Double(value) / Double(UInt64(1) << UInt64(unit * 10))) + " \(units[unit])B"
}

/// One row of qemu's snapshot table (or its header line when `snapshot` is nil), without the newline.
public func snapshotRow(_ snapshot: Qcow2Snapshot?) -> String {
    guard let s = snapshot else {
        return padded("ID", 10) + padded("TAG", 17) + padded("VM SIZE", -8) + padded("DATE", -20)
            + padded("VM CLOCK", -13) + padded("ICOUNT", -11)
    }
    var seconds = time_t(s.dateSec)
    var parts = tm()
    localtime_r(&seconds, &parts)
    var dateBuffer = [CChar](repeating: 0, count: 64)
    let dateLength = strftime(&dateBuffer, dateBuffer.count, "%Y-%m-%d %H:%M:%S", &parts)
    let date = String(decoding: dateBuffer.prefix(dateLength).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let clockSeconds = s.vmClockNsec / 1_000_000_000
    let clock = cFormat("%02d:%02d:%02d.%03d", Int32(clockSeconds / 3600), Int32((clockSeconds / 60) % 60),
                        Int32(clockSeconds % 60), Int32((s.vmClockNsec / 1_000_000) % 1000))
    let icount = s.icount.map { String($0) } ?? ""
    return padded(s.id, 9) + " " + padded(s.name, 16) + " " + padded(humanSize(s.vmStateSize), -8) + padded(date, -20)
        + padded(clock, -13) + padded(icount, -11)
}

/// `s` padded with spaces to `width` bytes, like `%-Ns` (positive width) or `%Ns` (negative width).
func padded(_ s: String, _ width: Int) -> String {
    let fill = String(repeating: " ", count: max(0, abs(width) - s.utf8.count))
    return width < 0 ? fill + s : s + fill
}

/// The snapshot list `qemu-img snapshot -l` and `qemu-img info` print (nothing for no snapshots).
public func snapshotTable(_ snapshots: [Qcow2Snapshot]) -> String {
    if snapshots.isEmpty { return "" }
    return "Snapshot list:\n" + ([snapshotRow(nil)] + snapshots.map(snapshotRow)).map { $0 + "\n" }.joined()
}

/// `qemu-img info` human output for one image, from the JSON `imageInfo` builds.
public func humanInfo(_ info: JSON, snapshots: [Qcow2Snapshot]) -> String {
    guard case .object(let fields) = info else { return "" }
    func value(_ key: String) -> JSON? { fields.first { $0.0 == key }?.1 }
    func number(_ key: String) -> UInt64? { if case .int(let i)? = value(key) { return UInt64(bitPattern: i) }; return nil }
    func string(_ key: String) -> String? { if case .string(let s)? = value(key) { return s }; return nil }
    let size = number("virtual-size") ?? 0
    var out = "image: \(string("filename") ?? "")\nfile format: \(string("format") ?? "")\n"
    out += "virtual size: \(humanSize(size)) (\(size) bytes)\n"
    out += "disk size: \(number("actual-size").map(humanSize) ?? "unavailable")\n"
    if let cluster = number("cluster-size") { out += "cluster_size: \(cluster)\n" }
    if case .bool(true)? = value("dirty-flag") { out += "cleanly shut down: no\n" }
    if let backing = string("backing-filename") {
        out += "backing file: \(backing)"
        if let full = string("full-backing-filename"), full != backing { out += " (actual path: \(full))" }
        out += "\n"
        if let format = string("backing-filename-format") { out += "backing file format: \(format)\n" }
    }
    out += snapshotTable(snapshots)
    if case .object(let specific)? = value("format-specific"), let data = specific.first(where: { $0.0 == "data" })?.1 {
        out += "Format specific information:\n" + humanTree(data, indent: 1)
    }
    return out
}

/// qemu's dump of a QAPI object: keys with dashes shown as spaces, lists as `[i]:`, four spaces per level.
func humanTree(_ value: JSON, indent: Int) -> String {
    let pad = String(repeating: " ", count: indent * 4)
    func scalar(_ v: JSON) -> String? {
        switch v {
        case .string(let s): return s
        case .int(let i): return String(i)
        case .bool(let b): return b ? "true" : "false"
        case .double(let d): return cFormat("%g", d)
        case .object, .array: return nil
        }
    }
    var out = ""
    switch value {
    case .object(let fields):
        for (key, v) in fields {
            let name = String(key.map { $0 == "-" ? " " : $0 })
            if let s = scalar(v) { out += "\(pad)\(name): \(s)\n" } else { out += "\(pad)\(name):\n" + humanTree(v, indent: indent + 1) }
        }
    case .array(let items):
        for (i, v) in items.enumerated() {
            if let s = scalar(v) { out += "\(pad)[\(i)]: \(s)\n" } else { out += "\(pad)[\(i)]:\n" + humanTree(v, indent: indent + 1) }
        }
    default:
        if let s = scalar(value) { out += pad + s + "\n" }
    }
    return out
}

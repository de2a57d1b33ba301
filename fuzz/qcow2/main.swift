// libFuzzer entry point: parse an arbitrary byte string as a qcow2 image, read it, check it,
// write to it, snapshot it and repair it, also through the lenient open of `check`.
// Any crash, hang or unbounded allocation is a bug.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQcow2(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var ro = Qcow2OpenOptions(writable: false)
    ro.openBacking = false
    if let img = try? Qcow2Image(file: MemoryFile(bytes, writable: false), path: nil, options: ro) {
        var buf = [UInt8](repeating: 0, count: 65536)
        let size = img.virtualSize
        // The first 1 MiB and a few scattered requests (the virtual size can be huge).
        var offsets: [UInt64] = stride(from: 0, to: min(size, 1 << 20), by: 65536).map { UInt64($0) }
        if size > 65536 { offsets += [size / 3, size / 2, size - 65536] }
        for o in offsets where o + 65536 <= size || size < 65536 {
            let n = Int(min(65536, size - o))
            buf.withUnsafeMutableBytes { b in
                _ = try? img.read(at: o, into: UnsafeMutableRawBufferPointer(rebasing: b[0..<n]))
            }
        }
        _ = try? img.check()
    }
    var rw = Qcow2OpenOptions(writable: true)
    rw.openBacking = false
    if let img = try? Qcow2Image(file: MemoryFile(bytes, writable: true, maxSize: 64 << 20), path: nil, options: rw) {
        let w = [UInt8](repeating: 0x5a, count: 5000)
        w.withUnsafeBytes { b in
            _ = try? img.write(at: 3000, from: b)
            if img.virtualSize > 200_000 { _ = try? img.write(at: img.virtualSize / 2, from: b) }
        }
        _ = try? img.discard(at: 0, length: min(img.virtualSize, 1 << 16))
        _ = try? img.createSnapshot(name: "fuzz", dateSec: 0)
        if let s = img.snapshots.first { _ = try? img.applySnapshot(s.id) }
        _ = try? img.check(repair: true)
    }
    // The lenient open `tern image check` uses, then both repair modes.
    var lenient = Qcow2OpenOptions(writable: true)
    lenient.openBacking = false
    lenient.lenient = true
    for mode in RepairMode.allCases {
        if let img = try? Qcow2Image(file: MemoryFile(bytes, writable: true, maxSize: 64 << 20), path: nil, options: lenient) {
            _ = try? img.check(repairing: nil)
            _ = try? img.check(repairing: mode)
        }
    }
    return 0
}

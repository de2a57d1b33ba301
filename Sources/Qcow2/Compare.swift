#if canImport(Glibc)
import Glibc
#endif

/// How two images compare, as `qemu-img compare` reports it.
public enum ImageComparison: Sendable, Equatable {
    case identical
    /// The first 512-byte sector that differs.
    case contentMismatch(offset: UInt64)
    /// Strict mode: the sizes differ.
    case sizeMismatch
    /// Strict mode: allocation differs at this offset.
    case blockStatusMismatch(offset: UInt64)

    /// qemu-img's line for the result.
    public var message: String {
        switch self {
        case .identical: return "Images are identical."
        case .contentMismatch(let o): return "Content mismatch at offset \(o)!"
        case .sizeMismatch: return "Strict mode: Image size mismatch!"
        case .blockStatusMismatch(let o): return "Strict mode: Offset \(o) block status mismatch!"
        }
    }
}

/// Compares the guest-visible contents of two images. Without `strict`, a size difference is allowed when
/// the larger image reads as zeros past the smaller one's end (`sizesDiffer` reports it, for the warning).
public func compareImages(_ first: any BlockBackend, _ firstPath: String, _ second: any BlockBackend, _ secondPath: String,
                          strict: Bool, sizesDiffer: (() -> Void)? = nil,
                          progress: ProgressMeter = ProgressMeter(.off)) throws(DiskError) -> ImageComparison {
    let size1 = first.virtualSize, size2 = second.virtualSize
    if size1 != size2 {
        if strict { return .sizeMismatch }
        sizesDiffer?()
    }
    let map1 = try imageMap(device: first, path: firstPath), map2 = try imageMap(device: second, path: secondPath)
    let total = max(size1, size2)
    let chunk = 1 << 20
    let buffer1 = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
    let buffer2 = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
    defer { buffer1.deallocate(); buffer2.deallocate() }
    var i1 = 0, i2 = 0
    var offset: UInt64 = 0
    progress.update(0, of: total)
    while offset < total {
        while i1 < map1.count, map1[i1].start + map1[i1].length <= offset { i1 += 1 }
        while i2 < map2.count, map2[i2].start + map2[i2].length <= offset { i2 += 1 }
        let e1 = i1 < map1.count ? map1[i1] : nil, e2 = i2 < map2.count ? map2[i2] : nil
        var n = UInt64(chunk)
        if let e = e1 { n = min(n, e.start + e.length - offset) }
        if let e = e2 { n = min(n, e.start + e.length - offset) }
        if strict, let a = e1, let b = e2, (a.present, a.zero, a.data) != (b.present, b.zero, b.data) {
            return .blockStatusMismatch(offset: offset)
        }
        let zero1 = e1.map { $0.zero && !$0.data } ?? true, zero2 = e2.map { $0.zero && !$0.data } ?? true
        if !(zero1 && zero2) {
            let a = UnsafeMutableRawBufferPointer(rebasing: buffer1[0..<Int(n)])
            let b = UnsafeMutableRawBufferPointer(rebasing: buffer2[0..<Int(n)])
            if zero1 { a.initializeMemory(as: UInt8.self, repeating: 0) } else { try readClamped(first, at: offset, into: a) }
            if zero2 { b.initializeMemory(as: UInt8.self, repeating: 0) } else { try readClamped(second, at: offset, into: b) }
            var sector = 0
            while sector < Int(n) {
                let end = min(sector + 512, Int(n))
                if memcmp(a.baseAddress! + sector, b.baseAddress! + sector, end - sector) != 0 {
                    return .contentMismatch(offset: offset + UInt64(sector))
                }
                sector = end
            }
        }
        offset += n
        progress.update(offset, of: total)
    }
    return .identical
}

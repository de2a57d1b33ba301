/// `qemu-img dd` operands: `bs=`, `count=` and `skip=` in blocks of `blockSize` bytes.
public struct DdOptions: Sendable {
    public var blockSize: UInt64 = 512
    public var count: UInt64?
    public var skip: UInt64?
    public init() {}

    /// Bytes of the source the copy ends at: its size, or `count` blocks when fewer.
    func end(sourceSize: UInt64) -> UInt64 {
        guard let count else { return sourceSize }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: blockSize)
        return !overflow && bytes < sourceSize ? bytes : sourceSize
    }

    /// Where the copy starts in the source, or nil when `skip` lies beyond `end`.
    func start(end: UInt64) -> UInt64? {
        guard let skip else { return 0 }
        let (bytes, overflow) = skip.multipliedReportingOverflow(by: blockSize)
        return overflow || bytes > end ? nil : bytes
    }
}

/// Copies the source from `skip` blocks to `count` blocks (or its end) into a new image at `path`, as `qemu-img dd`
/// does. Returns false when `skip` lies past the end, in which case the output is an empty image.
public func dd(_ source: any BlockBackend, to path: String, spec: ImageSpec, options: DdOptions) throws(DiskError) -> Bool {
    let end = options.end(sourceSize: source.virtualSize)
    let start = options.start(end: end)
    var spec = spec
    spec.size = end - (start ?? end)
    try createImage(path, spec: &spec, openBacking: false)
    guard let start else { return false }
    let target = try openImage(path: path, format: spec.format, writable: true)
    let chunk = 1 << 20
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
    defer { buffer.deallocate() }
    var position = start
    while position < end {
        let n = Int(min(UInt64(chunk), end - position))
        let data = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
        try source.read(at: position, into: data)
        try writeRuns(UnsafeRawBufferPointer(data), at: position - start, into: target, block: 4096, skipZeros: true, zeroed: true)
        position += UInt64(n)
    }
    try target.flush()
    return true
}

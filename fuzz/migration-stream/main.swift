import Glibc

/// Guest memory the fuzzed stream writes into: 16 pages, with a guard page on each side that must stay untouched.
nonisolated(unsafe) let arena: UnsafeMutableRawPointer = {
    let mapping = mmap(nil, 18 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
    mprotect(mapping, 4096, PROT_NONE)
    mprotect(mapping.advanced(by: 17 * 4096), 4096, PROT_NONE)
    return mapping
}()
nonisolated(unsafe) let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 + 9 * PageBatch.maximumPages, alignment: 8)

/// libFuzzer entry point: reads the bytes as a destination reads a migration stream, frame after frame, until the
/// stream ends or is refused. Nothing may trap, hang, or write outside the 16 pages of guest memory.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMigrationStream(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var source = MemoryByteSource(Array(UnsafeBufferPointer(start: data, count: size)))
    let regions = [MigrationRegion(guestAddress: 0, size: 16 * 4096, host: arena.advanced(by: 4096))]
    var header = [UInt8](repeating: 0, count: FrameHeader.size)
    while true {
        let read: Result<FrameHeader, MigrationError> = header.withUnsafeMutableBytes { buffer in
            Result { () throws(MigrationError) in
                try source.readExactly(into: buffer)
                return try FrameHeader(decoding: UnsafeRawBufferPointer(buffer))
            }
        }
        guard case .success(let frame) = read, frame.length <= size else { return 0 }
        switch frame.kind {
        case .pages:
            guard (try? PageBatch.receive(length: frame.length, from: &source, into: regions, scratch: scratch)) != nil else { return 0 }
        default:
            var payload = [UInt8](repeating: 0, count: frame.length)
            let ok = payload.withUnsafeMutableBytes { buffer in (try? source.readExactly(into: buffer)) != nil }
            guard ok else { return 0 }
            if frame.kind == .hello { _ = try? MigrationHello(decoding: payload) }
        }
    }
}

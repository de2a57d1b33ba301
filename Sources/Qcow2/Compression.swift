import CZlib
import CZstd

/// Compressed-cluster codecs. qcow2 stores deflate without a zlib header (window bits -12) or zstd frames.
enum Codec {
    /// Inflates `input` into exactly `output.count` bytes. Trailing input (sector padding) is ignored.
    static func inflateRaw(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws(DiskError) {
        var s = z_stream()
        guard inflateInit2_(&s, -12, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw .io("inflateInit2", errno: 12)
        }
        defer { inflateEnd(&s) }
        s.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        s.avail_in = uInt(input.count)
        s.next_out = output.baseAddress!.assumingMemoryBound(to: Bytef.self)
        s.avail_out = uInt(output.count)
        let r = inflate(&s, Z_FINISH)
        // Z_STREAM_END, or Z_BUF_ERROR with a full output buffer, is a complete cluster.
        if !(r == Z_STREAM_END || ((r == Z_BUF_ERROR || r == Z_OK) && s.avail_out == 0)) {
            throw .corrupt("compressed cluster does not inflate (zlib error \(r))")
        }
        if s.avail_out != 0 { throw .corrupt("compressed cluster inflates to \(output.count - Int(s.avail_out)) bytes, not \(output.count)") }
    }

    static func decompressZstd(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws(DiskError) {
        guard let ds = ZSTD_createDStream() else { throw .io("ZSTD_createDStream", errno: 12) }
        defer { ZSTD_freeDStream(ds) }
        ZSTD_initDStream(ds)
        var inb = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        var outb = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
        while outb.pos < outb.size {
            let r = ZSTD_decompressStream(ds, &outb, &inb)
            if ZSTD_isError(r) != 0 {
                throw .corrupt("compressed cluster does not decompress (zstd: \(String(cString: ZSTD_getErrorName(r))))")
            }
            if r == 0 && outb.pos < outb.size {
                // A frame ended early; QEMU allows several frames only if they fill the cluster.
                if inb.pos >= inb.size { break }
                continue
            }
            if inb.pos >= inb.size && outb.pos < outb.size { break }
        }
        if outb.pos != outb.size { throw .corrupt("compressed cluster decompresses to \(outb.pos) bytes, not \(outb.size)") }
    }

    /// Raw deflate. Returns nil when the result would not be smaller than `limit` bytes.
    static func deflateRaw(_ input: UnsafeRawBufferPointer, limit: Int) -> [UInt8]? {
        var s = z_stream()
        guard deflateInit2_(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY,
                             ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return nil }
        defer { deflateEnd(&s) }
        var out = [UInt8](repeating: 0, count: limit)
        let r: Int32 = out.withUnsafeMutableBytes { ob in
            s.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
            s.avail_in = uInt(input.count)
            s.next_out = ob.baseAddress!.assumingMemoryBound(to: Bytef.self)
            s.avail_out = uInt(limit)
            return deflate(&s, Z_FINISH)
        }
        guard r == Z_STREAM_END else { return nil }
        out.removeLast(Int(s.avail_out))
        return out
    }
}

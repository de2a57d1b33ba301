import CLz4
import CLzma
import CZlib
import CZstd

/// A compression format Tern can undo on the host, recognised by its leading magic bytes.
public enum CompressionFormat: String, Equatable, Sendable, CaseIterable {
    case gzip, xz, zstd, lz4

    /// The format `bytes` starts with, if Tern can decompress it.
    public static func detect(_ bytes: UnsafeRawBufferPointer) -> CompressionFormat? {
        func starts(with magic: [UInt8]) -> Bool {
            bytes.count >= magic.count && zip(bytes, magic).allSatisfy { $0 == $1 }
        }
        if starts(with: [0x1F, 0x8B]) { return .gzip }
        if starts(with: [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]) { return .xz }
        if starts(with: [0x28, 0xB5, 0x2F, 0xFD]) { return .zstd }
        if starts(with: [0x02, 0x21, 0x4C, 0x18]) { return .lz4 }
        return nil
    }
}

/// Why a decompression failed.
public struct DecompressionError: Error, Equatable, CustomStringConvertible {
    public let description: String

    init(_ format: CompressionFormat, _ reason: String) {
        description = "\(format.rawValue) data: \(reason)"
    }
}

/// One-shot decompression of whole buffers, bounded so that hostile input cannot exhaust memory.
public enum Decompressor {
    /// Largest first output buffer, whatever size the input claims.
    static let initialCapacityLimit = 64 << 20
    /// Most memory liblzma may use for its dictionary and state.
    static let xzMemoryLimit: UInt64 = 512 << 20

    /// Decompresses `input` (format detected from its magic) into at most `limit` bytes.
    /// - Parameter sizeHint: the expected output size, used to size the buffer up front.
    public static func decompress(_ input: UnsafeRawBufferPointer, format: CompressionFormat, sizeHint: Int = 0,
                                  limit: Int) throws(DecompressionError) -> [UInt8] {
        // The hint comes from the input too: trust it only up to a modest first allocation, then grow as output arrives.
        let initial = min(limit, initialCapacityLimit, max(sizeHint, input.count * 4, 1 << 16))
        switch format {
        case .gzip: return try gzip(input, initial: initial, limit: limit)
        case .xz: return try xz(input, initial: initial, limit: limit)
        case .zstd: return try zstd(input, initial: initial, limit: limit)
        case .lz4: return try lz4Legacy(input, limit: limit)
        }
    }

    static func grow(_ output: inout [UInt8], limit: Int, format: CompressionFormat) throws(DecompressionError) {
        guard output.count < limit else { throw DecompressionError(format, "expands beyond \(limit >> 20) MiB") }
        output.append(contentsOf: repeatElement(0, count: min(output.count, limit - output.count)))
    }

    static func gzip(_ input: UnsafeRawBufferPointer, initial: Int, limit: Int) throws(DecompressionError) -> [UInt8] {
        var stream = z_stream()
        guard inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw DecompressionError(.gzip, "cannot initialise zlib")
        }
        defer { inflateEnd(&stream) }
        var output = [UInt8](repeating: 0, count: initial)
        var produced = 0
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: UInt8.self))
        stream.avail_in = UInt32(input.count)
        while true {
            let status: Int32 = output.withUnsafeMutableBytes { buffer in
                stream.next_out = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self) + produced
                stream.avail_out = UInt32(buffer.count - produced)
                let status = inflate(&stream, Z_NO_FLUSH)
                produced = buffer.count - Int(stream.avail_out)
                return status
            }
            switch status {
            case Z_STREAM_END: output.removeLast(output.count - produced); return output
            case Z_OK, Z_BUF_ERROR:
                if stream.avail_out == 0 {
                    try grow(&output, limit: limit, format: .gzip)
                } else if stream.avail_in == 0 {
                    throw DecompressionError(.gzip, "truncated")
                }
            default:
                throw DecompressionError(.gzip, "corrupt (zlib status \(status))")
            }
        }
    }

    static func xz(_ input: UnsafeRawBufferPointer, initial: Int, limit: Int) throws(DecompressionError) -> [UInt8] {
        var stream = lzma_stream()
        guard lzma_stream_decoder(&stream, xzMemoryLimit, 0) == LZMA_OK else {
            throw DecompressionError(.xz, "cannot initialise liblzma")
        }
        defer { lzma_end(&stream) }
        var output = [UInt8](repeating: 0, count: initial)
        var produced = 0
        stream.next_in = input.baseAddress?.assumingMemoryBound(to: UInt8.self)
        stream.avail_in = input.count
        while true {
            let status: lzma_ret = output.withUnsafeMutableBytes { buffer in
                stream.next_out = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self) + produced
                stream.avail_out = buffer.count - produced
                let status = lzma_code(&stream, LZMA_FINISH)
                produced = buffer.count - stream.avail_out
                return status
            }
            switch status {
            case LZMA_STREAM_END: output.removeLast(output.count - produced); return output
            case LZMA_OK, LZMA_BUF_ERROR:
                if stream.avail_out == 0 {
                    try grow(&output, limit: limit, format: .xz)
                } else {
                    throw DecompressionError(.xz, "truncated")
                }
            default:
                throw DecompressionError(.xz, "corrupt (liblzma status \(status.rawValue))")
            }
        }
    }

    static func zstd(_ input: UnsafeRawBufferPointer, initial: Int, limit: Int) throws(DecompressionError) -> [UInt8] {
        guard let stream = ZSTD_createDStream() else { throw DecompressionError(.zstd, "cannot initialise libzstd") }
        defer { ZSTD_freeDStream(stream) }
        var output = [UInt8](repeating: 0, count: initial)
        var inBuffer = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        var produced = 0
        while true {
            let result: Int = output.withUnsafeMutableBytes { buffer in
                var outBuffer = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: produced)
                let result = ZSTD_decompressStream(stream, &outBuffer, &inBuffer)
                produced = outBuffer.pos
                return result
            }
            if ZSTD_isError(result) != 0 {
                throw DecompressionError(.zstd, "corrupt (\(String(cString: ZSTD_getErrorName(result))))")
            }
            if result == 0 { output.removeLast(output.count - produced); return output }
            if produced == output.count {
                try grow(&output, limit: limit, format: .zstd)
            } else if inBuffer.pos == inBuffer.size {
                throw DecompressionError(.zstd, "truncated")
            }
        }
    }

    /// The legacy LZ4 format the Linux build uses: a magic, then blocks of at most 8 MiB, each led by its compressed size.
    static func lz4Legacy(_ input: UnsafeRawBufferPointer, limit: Int) throws(DecompressionError) -> [UInt8] {
        let blockSize = 8 << 20
        var output: [UInt8] = []
        var position = 4
        var block = [UInt8](repeating: 0, count: blockSize)
        while input.count - position >= 4 {
            let length = Int(UInt32(littleEndian: input.loadUnaligned(fromByteOffset: position, as: UInt32.self)))
            // Another magic starts a new frame; the kernel's trailing size word ends the stream.
            if length == 0x184C_2102 { position += 4; continue }
            guard length <= LZ4_compressBound(Int32(blockSize)), length <= input.count - position - 4 else { break }
            let decoded = block.withUnsafeMutableBytes { buffer in
                LZ4_decompress_safe(input.baseAddress!.advanced(by: position + 4).assumingMemoryBound(to: CChar.self),
                                    buffer.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(length), Int32(blockSize))
            }
            guard decoded >= 0 else { throw DecompressionError(.lz4, "corrupt block at offset \(position)") }
            guard output.count + Int(decoded) <= limit else { throw DecompressionError(.lz4, "expands beyond \(limit >> 20) MiB") }
            output.append(contentsOf: block[0..<Int(decoded)])
            position += 4 + length
        }
        guard !output.isEmpty else { throw DecompressionError(.lz4, "no blocks") }
        return output
    }
}

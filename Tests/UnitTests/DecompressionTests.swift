import CLz4
import CLzma
import CZlib
import CZstd
import Decompression
import TestSupport
import Testing

/// Test data: compressible but not trivial.
let sample: [UInt8] = (0..<300_000).map { UInt8(truncatingIfNeeded: ($0 * 7) ^ ($0 >> 5)) }

func gzipCompress(_ input: [UInt8]) -> [UInt8] {
    var stream = z_stream()
    deflateInit2_(&stream, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
    var output = [UInt8](repeating: 0, count: input.count + 1024)
    var input = input
    let produced = input.withUnsafeMutableBufferPointer { source in
        output.withUnsafeMutableBufferPointer { destination in
            stream.next_in = source.baseAddress
            stream.avail_in = UInt32(source.count)
            stream.next_out = destination.baseAddress
            stream.avail_out = UInt32(destination.count)
            deflate(&stream, Z_FINISH)
            return destination.count - Int(stream.avail_out)
        }
    }
    deflateEnd(&stream)
    return Array(output[0..<produced])
}

func xzCompress(_ input: [UInt8]) -> [UInt8] {
    var output = [UInt8](repeating: 0, count: input.count + 4096)
    var position = 0
    _ = lzma_easy_buffer_encode(6, LZMA_CHECK_CRC32, nil, input, input.count, &output, &position, output.count)
    return Array(output[0..<position])
}

func zstdCompress(_ input: [UInt8]) -> [UInt8] {
    var output = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
    let size = ZSTD_compress(&output, output.count, input, input.count, 3)
    return Array(output[0..<size])
}

/// The legacy LZ4 framing the Linux build uses: magic, then size-prefixed blocks of up to 8 MiB.
func lz4LegacyCompress(_ input: [UInt8]) -> [UInt8] {
    var output: [UInt8] = [0x02, 0x21, 0x4C, 0x18]
    var block = [UInt8](repeating: 0, count: Int(LZ4_compressBound(Int32(input.count))))
    let size = input.withUnsafeBytes { source in
        block.withUnsafeMutableBytes { destination in
            LZ4_compress_default(source.baseAddress!.assumingMemoryBound(to: CChar.self), destination.baseAddress!.assumingMemoryBound(to: CChar.self),
                                 Int32(input.count), Int32(destination.count))
        }
    }
    output.append(le32: UInt32(size))
    output.append(contentsOf: block[0..<Int(size)])
    output.append(le32: UInt32(input.count))  // the kernel build's trailing size word
    return output
}

@Suite struct DecompressionTests {
    static let cases: [(CompressionFormat, [UInt8])] = [
        (.gzip, gzipCompress(sample)), (.xz, xzCompress(sample)), (.zstd, zstdCompress(sample)), (.lz4, lz4LegacyCompress(sample)),
    ]

    @Test(arguments: DecompressionTests.cases.map(\.0))
    func roundTrips(format: CompressionFormat) throws {
        let compressed = try #require(Self.cases.first { $0.0 == format }?.1)
        let detected = compressed.withUnsafeBytes { CompressionFormat.detect($0) }
        #expect(detected == format)
        let output = try compressed.withUnsafeBytes { try Decompressor.decompress($0, format: format, limit: 1 << 20) }
        #expect(output == sample)
    }

    @Test(arguments: DecompressionTests.cases.map(\.0))
    func refusesOutputBeyondTheLimit(format: CompressionFormat) throws {
        let compressed = try #require(Self.cases.first { $0.0 == format }?.1)
        #expect(throws: DecompressionError.self) {
            try compressed.withUnsafeBytes { try Decompressor.decompress($0, format: format, limit: 100_000) }
        }
    }

    @Test(arguments: DecompressionTests.cases.map(\.0))
    func refusesTruncatedAndCorruptInput(format: CompressionFormat) throws {
        let compressed = try #require(Self.cases.first { $0.0 == format }?.1)
        let truncated = Array(compressed.prefix(compressed.count / 2))
        #expect(throws: DecompressionError.self) {
            try truncated.withUnsafeBytes { try Decompressor.decompress($0, format: format, limit: 1 << 20) }
        }
        // Every format but the legacy lz4 framing checks its data, so a corrupted stream fails to decode; lz4's
        // blocks carry no checksum, but corruption still never yields the original bytes.
        var corrupt = compressed
        for index in stride(from: 16, to: corrupt.count - 8, by: 7) { corrupt[index] ^= 0x5A }
        let decoded = Result { try corrupt.withUnsafeBytes { try Decompressor.decompress($0, format: format, limit: 1 << 20) } }
        if format == .lz4 {
            #expect((try? decoded.get()) != sample)
        } else {
            #expect(throws: DecompressionError.self) { try decoded.get() }
        }
    }

    @Test func unknownFormatsAreNotDetected() {
        #expect([UInt8]([0x42, 0x5A, 0x68, 0x39]).withUnsafeBytes { CompressionFormat.detect($0) } == nil)
        #expect([UInt8]().withUnsafeBytes { CompressionFormat.detect($0) } == nil)
    }
}

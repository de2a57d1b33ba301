/// A region of guest memory a migration reads from or writes into.
public struct MigrationRegion: @unchecked Sendable {
    public let guestAddress: UInt64
    public let size: UInt64
    public let host: UnsafeMutableRawPointer

    public init(guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer) {
        self.guestAddress = guestAddress
        self.size = size
        self.host = host
    }

    public var pageCount: Int { Int(size / PageBatch.pageSize) }
}

/// Reads exactly the bytes asked for, from a socket or from memory.
public protocol ByteSource {
    mutating func readExactly(into buffer: UnsafeMutableRawBufferPointer) throws(MigrationError)
}

/// A batch of guest pages in a `pages` frame: region (u32), page count (u32), the page indices within the region
/// (u64 each, strictly increasing), a bitmap with one bit per page (set: the page is all zeros and no bytes
/// follow for it), then 4096 bytes for every page that is not zero, in index order.
public enum PageBatch {
    public static let pageSize: UInt64 = 4096
    /// Pages in one batch at most: 1 MiB of data, 257 iovecs to send it.
    public static let maximumPages = 256

    /// The payload length of a batch of `count` pages of which `zeroPages` are zero.
    public static func payloadLength(count: Int, zeroPages: Int) -> Int {
        8 + 8 * count + (count + 7) / 8 + (count - zeroPages) * Int(pageSize)
    }

    /// Whether the 4096 bytes at `page` are all zero, read eight bytes at a time.
    @inline(__always)
    public static func isZero(_ page: UnsafeRawPointer) -> Bool {
        let words = page.assumingMemoryBound(to: UInt64.self)
        var accumulated: UInt64 = 0
        var index = 0
        while index < 512 {
            accumulated |= words[index] | words[index + 1] | words[index + 2] | words[index + 3]
            if accumulated != 0 { return false }
            index += 4
        }
        return true
    }

    /// Reads the rest of a `pages` frame of `length` bytes from `source` and writes its pages into `regions`,
    /// after checking the region, the count, every index and the length against each other, so that a hostile
    /// stream can write nothing outside guest memory. `scratch` holds the index and bitmap (at least
    /// `8 * maximumPages + maximumPages / 8` bytes). Returns the pages written and how many of them were zero.
    public static func receive<Source: ByteSource>(
        length: Int, from source: inout Source, into regions: [MigrationRegion], scratch: UnsafeMutableRawBufferPointer
    ) throws(MigrationError) -> (pages: Int, zero: Int) {
        guard length >= 8 else { throw .protocolViolation("a page batch of \(length) bytes") }
        try source.readExactly(into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<8]))
        let regionIndex = Int(UInt32(littleEndian: scratch.loadUnaligned(fromByteOffset: 0, as: UInt32.self)))
        let count = Int(UInt32(littleEndian: scratch.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        guard regionIndex < regions.count else { throw .protocolViolation("page batch for region \(regionIndex) of \(regions.count)") }
        guard count > 0, count <= maximumPages else { throw .protocolViolation("a page batch of \(count) pages") }
        let indexBytes = 8 * count
        let bitmapBytes = (count + 7) / 8
        guard length >= 8 + indexBytes + bitmapBytes else { throw .protocolViolation("a page batch shorter than its index") }
        let metadata = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<indexBytes + bitmapBytes])
        try source.readExactly(into: metadata)
        let region = regions[regionIndex]
        var zeroPages = 0
        var previous: UInt64? = nil
        for position in 0..<count {
            let page = UInt64(littleEndian: metadata.loadUnaligned(fromByteOffset: 8 * position, as: UInt64.self))
            guard page < UInt64(region.pageCount) else {
                throw .protocolViolation("page \(page) is outside region \(regionIndex) of \(region.pageCount) pages")
            }
            if let previous, page <= previous { throw .protocolViolation("page indices are not increasing at \(page)") }
            previous = page
            if metadata[indexBytes + position / 8] & (1 << (position % 8)) != 0 { zeroPages += 1 }
        }
        let unusedBits = bitmapBytes * 8 - count
        if unusedBits > 0, metadata[indexBytes + bitmapBytes - 1] >> (8 - unusedBits) != 0 {
            throw .protocolViolation("bits past the last page are set in a batch's zero bitmap")
        }
        guard length == payloadLength(count: count, zeroPages: zeroPages) else {
            throw .protocolViolation("a batch of \(count) pages (\(zeroPages) zero) announced \(length) bytes")
        }
        for position in 0..<count {
            let page = UInt64(littleEndian: metadata.loadUnaligned(fromByteOffset: 8 * position, as: UInt64.self))
            let target = region.host.advanced(by: Int(page * pageSize))
            if metadata[indexBytes + position / 8] & (1 << (position % 8)) != 0 {
                target.initializeMemory(as: UInt8.self, repeating: 0, count: Int(pageSize))
            } else {
                try source.readExactly(into: UnsafeMutableRawBufferPointer(start: target, count: Int(pageSize)))
            }
        }
        return (count, zeroPages)
    }
}

/// Bytes held in memory, read front to back: a received frame, or a fuzzer's input.
public struct MemoryByteSource: ByteSource {
    let bytes: [UInt8]
    public private(set) var position = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public mutating func readExactly(into buffer: UnsafeMutableRawBufferPointer) throws(MigrationError) {
        guard bytes.count - position >= buffer.count else { throw .peerClosed }
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[position..<position + buffer.count])) }
        position += buffer.count
    }
}

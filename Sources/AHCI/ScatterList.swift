import GuestMemory

/// A command's physical region descriptor table (AHCI 1.3.1, 4.2.3.3), read once and checked: every region lies in
/// guest RAM. Reused from command to command, so a port allocates nothing per request once it has grown.
struct ScatterList {
    /// Most regions a command may name (the PRDTL field is 16 bits).
    static let maximumRegions = 0xFFFF
    /// A region's byte count field is 22 bits and holds the count minus one.
    static let byteCountMask: UInt32 = 0x3F_FFFF

    private(set) var regions: [(address: UInt64, length: Int)] = []
    private(set) var totalLength = 0

    /// Why a table cannot be used.
    enum ScatterError: Error, Equatable {
        case tableOutsideRAM(UInt64)
        case regionOutsideRAM(UInt64, Int)
    }

    /// Reads `count` 16-byte entries at `table`.
    mutating func load(table: UInt64, count: Int, memory: GuestMemory) throws(ScatterError) {
        regions.removeAll(keepingCapacity: true)
        totalLength = 0
        guard memory.contains(table, length: UInt64(count) * 16) else { throw .tableOutsideRAM(table) }
        for index in 0..<count {
            let entry = table + UInt64(index) * 16
            do {
                let low = try memory.load(UInt32.self, at: entry)
                let high = try memory.load(UInt32.self, at: entry + 4)
                let flags = try memory.load(UInt32.self, at: entry + 12)
                let address = UInt64(high) << 32 | UInt64(low & ~1)
                let length = Int(flags & Self.byteCountMask) + 1
                guard memory.contains(address, length: UInt64(length)) else { throw ScatterError.regionOutsideRAM(address, length) }
                regions.append((address, length))
                totalLength += length
            } catch let error as ScatterError {
                throw error
            } catch {
                throw .tableOutsideRAM(table)
            }
        }
    }

    /// Calls `body` with each piece of `count` bytes from byte `offset` of the list on: the piece's guest address
    /// and its position among the `count` bytes. Stops at the list's end.
    private func forEachPiece(at offset: Int, count: Int, _ body: (UInt64, Range<Int>) -> Void) {
        var skip = offset
        var done = 0
        for region in regions where done < count {
            if skip >= region.length {
                skip -= region.length
                continue
            }
            let length = min(region.length - skip, count - done)
            body(region.address + UInt64(skip), done..<done + length)
            done += length
            skip = 0
        }
    }

    /// Copies `bytes` into the regions from byte `offset` of the list on. The caller keeps within `totalLength`.
    func scatter(_ bytes: UnsafeRawBufferPointer, at offset: Int, memory: GuestMemory) {
        forEachPiece(at: offset, count: bytes.count) { address, piece in
            try? memory.write(UnsafeRawBufferPointer(rebasing: bytes[piece]), at: address)
        }
    }

    /// Copies from the regions, from byte `offset` of the list on, into `bytes`.
    func gather(into bytes: UnsafeMutableRawBufferPointer, at offset: Int, memory: GuestMemory) {
        forEachPiece(at: offset, count: bytes.count) { address, piece in
            try? memory.read(into: UnsafeMutableRawBufferPointer(rebasing: bytes[piece]), at: address)
        }
    }
}

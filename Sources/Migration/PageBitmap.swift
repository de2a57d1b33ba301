/// A bitmap with one bit per 4 KiB page of a memory region, bit 0 of word 0 the first page, as KVM's dirty log
/// lays it out. Owns its words; iteration yields set pages in order without allocating.
public final class PageBitmap: @unchecked Sendable {
    public let pageCount: Int
    public let words: UnsafeMutableBufferPointer<UInt64>

    public init(pageCount: Int) {
        self.pageCount = pageCount
        words = .allocate(capacity: (pageCount + 63) / 64)
        words.initialize(repeating: 0)
    }

    deinit { words.deallocate() }

    /// The words as raw bytes, for KVM_GET_DIRTY_LOG and KVM_CLEAR_DIRTY_LOG.
    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(words) }

    public func set(_ page: Int) { words[page >> 6] |= 1 << UInt64(page & 63) }
    public func contains(_ page: Int) -> Bool { words[page >> 6] & (1 << UInt64(page & 63)) != 0 }

    /// Sets every page, as before the first round, when all of memory is dirty.
    public func setAll() {
        words.update(repeating: .max)
        let spare = words.count * 64 - pageCount
        if spare > 0 { words[words.count - 1] >>= UInt64(spare) }
    }

    public func clearAll() { words.update(repeating: 0) }

    /// Adds every page set in `other`, which covers the same pages.
    public func formUnion(_ other: PageBitmap) {
        precondition(other.pageCount == pageCount)
        for index in 0..<words.count { words[index] |= other.words[index] }
    }

    /// How many pages are set.
    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// Writes up to `output.count` set pages from `start` into `output`, in order; returns how many it wrote and
    /// the page to continue from (`pageCount` when every page was visited).
    public func nextPages(from start: Int, into output: UnsafeMutableBufferPointer<UInt64>) -> (count: Int, next: Int) {
        var written = 0
        var wordIndex = start >> 6
        var word = wordIndex < words.count ? words[wordIndex] & (UInt64.max << UInt64(start & 63)) : 0
        while wordIndex < words.count {
            while word != 0 {
                if written == output.count { return (written, wordIndex << 6 + word.trailingZeroBitCount) }
                let page = wordIndex << 6 + word.trailingZeroBitCount
                output[written] = UInt64(page)
                written += 1
                word &= word - 1
            }
            wordIndex += 1
            if wordIndex < words.count { word = words[wordIndex] }
        }
        return (written, pageCount)
    }
}

import Synchronization

/// The pages of guest RAM the VMM itself wrote (device emulation: used rings, received data, loaded images), one
/// bit per 4 KiB page, which KVM's dirty log never sees. Marking is lock-free and allocation-free: while tracking is
/// off it costs one relaxed atomic load; while on, one atomic OR per 64 pages touched.
public final class WrittenPages: Sendable {
    public static let pageSize: UInt64 = 4096

    /// Pages covered, from guest RAM offset 0 (the regions laid end to end).
    public let pageCount: Int
    /// Owned; every access is atomic.
    private nonisolated(unsafe) let words: UnsafeMutablePointer<Atomic<UInt64>>
    private let wordCount: Int
    private let tracking = Atomic<Bool>(false)

    init(bytes: UInt64) {
        pageCount = Int((bytes + Self.pageSize - 1) / Self.pageSize)
        wordCount = (pageCount + 63) / 64
        words = .allocate(capacity: wordCount)
        for index in 0..<wordCount { (words + index).initialize(to: Atomic(0)) }
    }

    deinit {
        words.deinitialize(count: wordCount)
        words.deallocate()
    }

    /// Whether writes are being recorded.
    public var isTracking: Bool { tracking.load(ordering: .relaxed) }

    /// Starts or stops recording. Starting does not clear what was recorded before.
    public func setTracking(_ on: Bool) {
        tracking.store(on, ordering: .sequentiallyConsistent)
    }

    /// Records `length` bytes from RAM offset `offset` as written, if tracking is on.
    @inline(__always)
    func mark(offset: UInt64, length: UInt64) {
        guard length > 0, tracking.load(ordering: .relaxed) else { return }
        markAlways(first: Int(offset / Self.pageSize), last: Int((offset + length - 1) / Self.pageSize))
    }

    private func markAlways(first: Int, last: Int) {
        var page = first
        while page <= last {
            let bit = page % 64
            let count = min(64 - bit, last - page + 1)
            let mask = count == 64 ? UInt64.max : ((UInt64(1) << UInt64(count)) - 1) << UInt64(bit)
            words[page / 64].bitwiseOr(mask, ordering: .relaxed)
            page += count
        }
    }

    /// Takes the recorded pages and clears them, word by word atomically, so a write racing with the call is
    /// either in the result or stays recorded for the next. Bit `i % 64` of word `i / 64` is RAM page `i`.
    public func takeBitmap() -> [UInt64] {
        (0..<wordCount).map { words[$0].exchange(0, ordering: .acquiringAndReleasing) }
    }

    /// The RAM page numbers currently recorded, without clearing them.
    public func pages() -> [Int] {
        var result: [Int] = []
        for index in 0..<wordCount {
            var word = words[index].load(ordering: .acquiring)
            while word != 0 {
                result.append(index * 64 + word.trailingZeroBitCount)
                word &= word - 1
            }
        }
        return result
    }
}

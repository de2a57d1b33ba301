import Migration
import TestSupport
import Testing

@Suite struct ConvergenceTests {
    /// 1 GB/s: 1 byte per nanosecond.
    static let second: UInt64 = 1_000_000_000

    @Test func stopsWhenTheRestFitsTheDowntime() {
        var policy = ConvergencePolicy(downtimeTarget: 300_000_000)
        // 256 MiB in 0.25 s: ~1 GB/s; 16 MiB dirty takes ~16 ms.
        #expect(policy.roundFinished(sent: 256 << 20, nanoseconds: Self.second / 4, dirtyBytes: 16 << 20) == .stopAndCopy)
        #expect(policy.rounds == 1)
        #expect(policy.bytesPerSecond! > 1_000_000_000 && policy.bytesPerSecond! < 1_100_000_000)
    }

    @Test func aGuestDirtyingFasterThanTheLinkIsThrottledStepByStepThenStopped() {
        var policy = ConvergencePolicy(downtimeTarget: 1_000_000, roundsBeforeThrottling: 2, initialThrottle: 20, throttleStep: 30, maximumRounds: 8)
        var decisions: [ConvergencePolicy.Decision] = []
        for _ in 0..<8 {
            // 1 GB/s and 200 MB dirty every round: never fits 1 ms.
            decisions.append(policy.roundFinished(sent: 200_000_000, nanoseconds: Self.second / 5, dirtyBytes: 200_000_000))
        }
        // The first round sets the baseline; the next two stall, then throttling starts and deepens.
        #expect(decisions == [
            .anotherRound, .anotherRound, .throttle(percent: 80), .throttle(percent: 50), .throttle(percent: 20),
            .throttle(percent: 1), .throttle(percent: 1), .stopAndCopy,
        ])
    }

    @Test func aShrinkingDirtySetIsNotThrottled() {
        var policy = ConvergencePolicy(downtimeTarget: 1_000_000)
        var dirty: UInt64 = 512 << 20
        for _ in 0..<5 {
            dirty /= 2
            #expect(policy.roundFinished(sent: 64 << 20, nanoseconds: Self.second, dirtyBytes: dirty) == .anotherRound)
        }
        #expect(policy.runPercent == 100)
        #expect(policy.roundFinished(sent: 64 << 20, nanoseconds: Self.second, dirtyBytes: 0) == .stopAndCopy)
    }
}

@Suite struct PageBitmapTests {
    @Test func setPagesComeOutInOrderInBatches() {
        let bitmap = PageBitmap(pageCount: 200)
        let pages = [0, 1, 63, 64, 65, 127, 128, 199]
        for page in pages { bitmap.set(page) }
        #expect(bitmap.count == pages.count)
        let output = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 3)
        defer { output.deallocate() }
        var seen: [Int] = []
        var next = 0
        while next < bitmap.pageCount {
            let batch = bitmap.nextPages(from: next, into: output)
            seen += output.prefix(batch.count).map { Int($0) }
            next = batch.next
        }
        #expect(seen == pages)
    }

    @Test func setAllCoversExactlyThePagesAndUnionsAdd() {
        let all = PageBitmap(pageCount: 130)
        all.setAll()
        #expect(all.count == 130)
        #expect(!all.words.isEmpty && all.words[2] == 0b11)
        var random = SplitMix64(state: 7)
        let left = PageBitmap(pageCount: 1000), right = PageBitmap(pageCount: 1000)
        var expected = Set<Int>()
        for _ in 0..<300 {
            let page = Int(random.next() % 1000)
            (random.next() & 1 == 0 ? left : right).set(page)
            expected.insert(page)
        }
        left.formUnion(right)
        #expect(left.count == expected.count)
        #expect(expected.allSatisfy { left.contains($0) })
    }
}

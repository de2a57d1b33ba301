import GuestMemory
import TestSupport
import Testing
import Virtio

/// A queue's position, saved from one `SplitQueue` and restored into another over the same rings, as across a
/// snapshot; and the used-ring writes recorded for diff snapshots.
@Suite struct QueuePositionTests {
    @Test func aRestoredQueueCarriesOnWhereTheSavedOneStopped() throws {
        var ring = try TestRing.make()
        for index in 0..<4 { try ring.setDescriptor(index, address: TestRing.buffers + UInt64(index) * 0x100, length: 8) }
        for head: UInt16 in [0, 1, 2] { try ring.makeAvailable(head) }
        var first = try ring.queue()
        var chain = DescriptorChain(capacity: Int(ring.size))
        #expect(try first.nextChain(into: &chain))
        first.addUsed(head: chain.head, length: 8)
        let notify = first.needsNotification()
        #expect(notify)
        #expect(try first.nextChain(into: &chain))
        let saved = first.position
        #expect(saved == QueuePosition(lastAvailableIndex: 2, usedIndex: 1, signalledUsedIndex: 1))

        var restored = try ring.queue()
        restored.restore(saved)
        #expect(restored.position == saved)
        restored.addUsed(head: 1, length: 8)
        #expect(try restored.nextChain(into: &chain))
        #expect(chain.head == 2, "the restored queue pops the chain after the saved position, not the first again")
        #expect(try ring.usedIndex() == 2)
        #expect(try restored.nextChain(into: &chain) == false)
    }

    @Test func usedRingWritesAreRecordedWhileTracking() throws {
        var ring = try TestRing.make()
        try ring.setDescriptor(0, address: TestRing.buffers, length: 8)
        try ring.makeAvailable(0)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: Int(ring.size))
        #expect(try queue.nextChain(into: &chain))
        ring.memory.writtenPages.setTracking(true)
        queue.addUsed(head: 0, length: 8)
        #expect(ring.memory.writtenPages.pages() == [Int(ring.usedRing / 4096)])
    }
}

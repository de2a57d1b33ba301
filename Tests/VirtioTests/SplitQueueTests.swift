import GuestMemory
import TestSupport
import Testing
import Virtio

@Suite struct SplitQueueTests {
    @Test func emptyQueueHasNoChain() throws {
        let ring = try TestRing.make()
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: Int(ring.size))
        #expect(try queue.nextChain(into: &chain) == false)
        #expect(queue.lastAvailableIndex == 0)
    }

    @Test func simpleChainKeepsOrderAndDirections() throws {
        var ring = try TestRing.make()
        let base = TestRing.buffers
        try ring.setDescriptor(2, address: base, length: 16, flags: DescriptorFlag.next, next: 5)
        try ring.setDescriptor(5, address: base + 0x1000, length: 512, flags: DescriptorFlag.next, next: 0)
        try ring.setDescriptor(0, address: base + 0x2000, length: 1, flags: DescriptorFlag.write)
        try ring.makeAvailable(2)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: Int(ring.size))
        #expect(try queue.nextChain(into: &chain))
        #expect(chain.head == 2)
        #expect(Array(chain) == [
            .init(address: base, length: 16, isWrite: false),
            .init(address: base + 0x1000, length: 512, isWrite: false),
            .init(address: base + 0x2000, length: 1, isWrite: true),
        ])
        #expect(chain.readableCount == 2)
        #expect(chain.readableLength == 528)
        #expect(chain.writableLength == 1)
        #expect(try queue.nextChain(into: &chain) == false)
        #expect(queue.lastAvailableIndex == 1)
    }

    @Test func chainsPopInAvailableOrderAndTheBufferIsReused() throws {
        var ring = try TestRing.make()
        for index in 0..<4 {
            try ring.setDescriptor(index, address: TestRing.buffers + UInt64(index) * 0x100, length: UInt32(index + 1))
        }
        for head: UInt16 in [3, 1, 0, 2] { try ring.makeAvailable(head) }
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: Int(ring.size))
        var heads: [UInt16] = []
        while try queue.nextChain(into: &chain) {
            #expect(chain.count == 1)
            #expect(chain[0].length == UInt32(chain.head) + 1)
            heads.append(chain.head)
        }
        #expect(heads == [3, 1, 0, 2])
    }

    @Test func indirectChainIsFollowed() throws {
        var ring = try TestRing.make()
        let table = TestRing.buffers
        try ring.setDescriptor(0, address: table + 0x1000, length: 8, flags: DescriptorFlag.next, next: 1, table: table)
        try ring.setDescriptor(1, address: table + 0x2000, length: 100, flags: DescriptorFlag.next | DescriptorFlag.write, next: 2, table: table)
        try ring.setDescriptor(2, address: table + 0x3000, length: 4, flags: DescriptorFlag.write, table: table)
        // The WRITE flag on the descriptor naming the table is ignored.
        try ring.setDescriptor(6, address: table, length: 48, flags: DescriptorFlag.indirect | DescriptorFlag.write)
        try ring.makeAvailable(6)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: Int(ring.size))
        #expect(try queue.nextChain(into: &chain))
        #expect(chain.head == 6)
        #expect(chain.map(\.address) == [table + 0x1000, table + 0x2000, table + 0x3000])
        #expect(chain.map(\.isWrite) == [false, true, true])
        #expect(chain.writableLength == 104)
    }

    @Test func directDescriptorsMayLeadIntoOneIndirectTable() throws {
        var ring = try TestRing.make()
        let table = TestRing.buffers
        try ring.setDescriptor(0, address: table + 0x1000, length: 8, flags: DescriptorFlag.write, table: table)
        try ring.setDescriptor(3, address: table + 0x2000, length: 12, flags: DescriptorFlag.next, next: 4)
        try ring.setDescriptor(4, address: table, length: 16, flags: DescriptorFlag.indirect)
        try ring.makeAvailable(3)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: Int(ring.size))
        #expect(try queue.nextChain(into: &chain))
        #expect(chain.map(\.length) == [12, 8])
        #expect(chain.readableCount == 1)
    }

    @Test func addUsedWritesTheElementAndIndex() throws {
        var ring = try TestRing.make(size: 4)
        try ring.setDescriptor(1, address: TestRing.buffers, length: 64, flags: DescriptorFlag.write)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: 4)
        for round in 0..<6 {
            try ring.makeAvailable(1)
            #expect(try queue.nextChain(into: &chain))
            queue.addUsed(head: chain.head, length: UInt32(round))
            #expect(try ring.usedIndex() == UInt16(round + 1))
            let element = try ring.usedElement(round % 4)
            #expect(element.id == 1 && element.length == UInt32(round))
        }
        #expect(queue.usedIndex == 6)
    }

    @Test func indicesWrapAround65535() throws {
        var ring = try TestRing.make(size: 4, features: [.version1])
        try ring.setDescriptor(0, address: TestRing.buffers, length: 1)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: 4)
        for _ in 0..<65540 {
            try ring.makeAvailable(0)
            guard try queue.nextChain(into: &chain) else { Issue.record("no chain"); return }
            queue.addUsed(head: 0, length: 0)
        }
        #expect(queue.lastAvailableIndex == 4)
        #expect(queue.usedIndex == 4)
        #expect(try ring.usedIndex() == 4)
    }

    @Test func vringNeedEventMath() {
        // The event index must lie in [old, new) modulo 2^16.
        #expect(SplitQueue.needsEvent(eventIndex: 5, newIndex: 6, oldIndex: 5))
        #expect(SplitQueue.needsEvent(eventIndex: 5, newIndex: 10, oldIndex: 3))
        #expect(!SplitQueue.needsEvent(eventIndex: 5, newIndex: 5, oldIndex: 3))
        #expect(!SplitQueue.needsEvent(eventIndex: 2, newIndex: 10, oldIndex: 3))
        #expect(!SplitQueue.needsEvent(eventIndex: 7, newIndex: 7, oldIndex: 7))
        // Wraparound at 65535.
        #expect(SplitQueue.needsEvent(eventIndex: 65535, newIndex: 0, oldIndex: 65535))
        #expect(SplitQueue.needsEvent(eventIndex: 65535, newIndex: 2, oldIndex: 65534))
        #expect(SplitQueue.needsEvent(eventIndex: 0, newIndex: 1, oldIndex: 65535))
        #expect(SplitQueue.needsEvent(eventIndex: 1, newIndex: 3, oldIndex: 65530))
        #expect(!SplitQueue.needsEvent(eventIndex: 65534, newIndex: 0, oldIndex: 65535))
        #expect(!SplitQueue.needsEvent(eventIndex: 3, newIndex: 3, oldIndex: 65530))
    }

    @Test func eventIndexNotificationsFollowUsedEvent() throws {
        var ring = try TestRing.make(size: 8)
        try ring.setDescriptor(0, address: TestRing.buffers, length: 1, flags: DescriptorFlag.write)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: 8)
        func complete(_ count: Int) throws {
            for _ in 0..<count {
                try ring.makeAvailable(0)
                _ = try queue.nextChain(into: &chain)
                queue.addUsed(head: 0, length: 1)
            }
        }
        try ring.setUsedEvent(2)  // notify when used.idx passes 2, i.e. becomes 3
        try complete(2)
        let notified1 = queue.needsNotification()
        #expect(!notified1)
        try complete(1)
        let notified2 = queue.needsNotification()
        #expect(notified2)
        try complete(1)
        let notified3 = queue.needsNotification()
        #expect(!notified3)
        let notified4 = queue.needsNotification()
        #expect(!notified4)  // nothing new
        // NO_INTERRUPT is ignored with EVENT_IDX.
        try ring.setAvailableFlags(1)
        try ring.setUsedEvent(4)
        try complete(1)
        let notified5 = queue.needsNotification()
        #expect(notified5)
    }

    @Test func noInterruptFlagSuppressesNotificationsWithoutEventIndex() throws {
        var ring = try TestRing.make(size: 8, features: [.version1])
        try ring.setDescriptor(0, address: TestRing.buffers, length: 1)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: 8)
        let notified6 = queue.needsNotification()
        #expect(!notified6)
        try ring.makeAvailable(0)
        _ = try queue.nextChain(into: &chain)
        queue.addUsed(head: 0, length: 0)
        let notified7 = queue.needsNotification()
        #expect(notified7)
        let notified8 = queue.needsNotification()
        #expect(!notified8)
        try ring.setAvailableFlags(1)
        try ring.makeAvailable(0)
        _ = try queue.nextChain(into: &chain)
        queue.addUsed(head: 0, length: 0)
        let notified9 = queue.needsNotification()
        #expect(!notified9)
    }

    @Test func notificationSuppressionWithoutEventIndexUsesNoNotify() throws {
        var ring = try TestRing.make(size: 8, features: [.version1])
        try ring.setDescriptor(0, address: TestRing.buffers, length: 1)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: 8)
        queue.disableNotifications()
        #expect(try ring.usedFlags() == 1)
        #expect(!queue.enableNotifications())
        #expect(try ring.usedFlags() == 0)
        queue.disableNotifications()
        try ring.makeAvailable(0)
        #expect(queue.enableNotifications())  // a buffer arrived while notifications were off
        #expect(try queue.nextChain(into: &chain))
        #expect(!queue.enableNotifications())
    }

    @Test func notificationSuppressionWithEventIndexUsesAvailEvent() throws {
        var ring = try TestRing.make(size: 8)
        try ring.setDescriptor(0, address: TestRing.buffers, length: 1)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: 8)
        queue.disableNotifications()
        #expect(try ring.usedFlags() == 0)
        try ring.makeAvailable(0)
        try ring.makeAvailable(0)
        #expect(queue.enableNotifications())
        #expect(try ring.availEvent() == 0)
        while try queue.nextChain(into: &chain) {}
        #expect(!queue.enableNotifications())
        #expect(try ring.availEvent() == 2)
        queue.setAvailEvent(40)
        #expect(try ring.availEvent() == 40)
    }

    @Test func queueSetUpIsValidated() throws {
        let ring = try TestRing.make()
        func make(size: UInt16 = 8, table: UInt64 = TestRing.descriptorTable, avail: UInt64 = TestRing.availableRing,
                  used: UInt64 = TestRing.usedRing) -> VirtqueueError? {
            do {
                _ = try SplitQueue(memory: ring.memory, size: size, descriptorTable: table, availableRing: avail,
                                   usedRing: used, features: ring.features)
                return nil
            } catch { return error }
        }
        #expect(make() == nil)
        #expect(make(size: 32768) == nil)
        #expect(make(size: 0) == .invalidQueueSize(0))
        #expect(make(size: 6) == .invalidQueueSize(6))
        #expect(make(size: 65535) == .invalidQueueSize(65535))
        #expect(make(table: TestRing.descriptorTable + 8) == .misalignedRing(.descriptorTable, address: TestRing.descriptorTable + 8, alignment: 16))
        #expect(make(avail: TestRing.availableRing + 1) == .misalignedRing(.availableRing, address: TestRing.availableRing + 1, alignment: 2))
        #expect(make(used: TestRing.usedRing + 2) == .misalignedRing(.usedRing, address: TestRing.usedRing + 2, alignment: 4))
        #expect(make(used: (16 << 20) - 64) == .ringOutsideRAM(.usedRing, address: (16 << 20) - 64, length: 70))
        #expect(make(used: TestRing.descriptorTable + 64) == .overlappingRings(.usedRing, .descriptorTable))
        #expect(make(avail: TestRing.usedRing + 64) == .overlappingRings(.usedRing, .availableRing))
        #expect(make(avail: TestRing.usedRing - 20) == .overlappingRings(.usedRing, .availableRing))
        #expect(make(avail: TestRing.usedRing - 22) == nil)
        #expect(make(avail: TestRing.descriptorTable) == nil)  // both read-only to the device
        #expect(make(table: 0xFFFF_FFFF_FFFF_FFF0) == .ringOutsideRAM(.descriptorTable, address: 0xFFFF_FFFF_FFFF_FFF0, length: 128))
    }
}

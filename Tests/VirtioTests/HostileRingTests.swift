import GuestMemory
import TestSupport
import Testing
import Virtio

/// Rings a malicious or broken driver could build: each must give one precise error.
@Suite struct HostileRingTests {
    /// Publishes `head` on `ring` and returns the error popping it gives.
    private func popError(_ ring: inout DriverRing, head: UInt16 = 0) throws -> VirtqueueError? {
        try ring.makeAvailable(head)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: Int(ring.size))
        return queue.popError(&chain)
    }

    private func direct(_ index: UInt16) -> DescriptorLocation { DescriptorLocation(index: index, isIndirect: false) }
    private func inTable(_ index: UInt16) -> DescriptorLocation { DescriptorLocation(index: index, isIndirect: true) }

    @Test func loopThroughNextIsCaught() throws {
        var ring = try TestRing.make()
        try ring.setDescriptor(0, address: TestRing.buffers, length: 1, flags: DescriptorFlag.next, next: 1)
        try ring.setDescriptor(1, address: TestRing.buffers, length: 1, flags: DescriptorFlag.next, next: 0)
        #expect(try popError(&ring) == .chainTooLong(head: 0, limit: 8))
    }

    @Test func selfLoopIsCaught() throws {
        var ring = try TestRing.make(size: 32768)
        try ring.setDescriptor(7, address: TestRing.buffers, length: 1, flags: DescriptorFlag.next, next: 7)
        #expect(try popError(&ring, head: 7) == .chainTooLong(head: 7, limit: 32768))
    }

    @Test func loopInsideIndirectTableIsCaught() throws {
        var ring = try TestRing.make()
        let table = TestRing.buffers
        try ring.setDescriptor(0, address: table + 0x1000, length: 1, flags: DescriptorFlag.next, next: 1, table: table)
        try ring.setDescriptor(1, address: table + 0x1000, length: 1, flags: DescriptorFlag.next, next: 0, table: table)
        try ring.setDescriptor(0, address: table, length: 32, flags: DescriptorFlag.indirect)
        #expect(try popError(&ring) == .chainTooLong(head: 0, limit: 8))
    }

    @Test func chainLongerThanQueueSizeIsRefused() throws {
        // Three direct descriptors and a four-entry indirect table: seven segments in a queue of four.
        var ring = try TestRing.make(size: 4)
        let table = TestRing.buffers
        for index in 0..<4 {
            try ring.setDescriptor(index, address: table + 0x1000, length: 1, flags: index < 3 ? DescriptorFlag.next : 0,
                                   next: UInt16(index + 1), table: table)
        }
        try ring.setDescriptor(0, address: table + 0x1000, length: 1, flags: DescriptorFlag.next, next: 1)
        try ring.setDescriptor(1, address: table + 0x1000, length: 1, flags: DescriptorFlag.next, next: 2)
        try ring.setDescriptor(2, address: table + 0x1000, length: 1, flags: DescriptorFlag.next, next: 3)
        try ring.setDescriptor(3, address: table, length: 64, flags: DescriptorFlag.indirect)
        #expect(try popError(&ring) == .chainTooLong(head: 0, limit: 4))
    }

    @Test func bufferOutsideRAMIsRefused() throws {
        var ring = try TestRing.make()
        try ring.setDescriptor(5, address: (16 << 20) - 8, length: 16)
        let error = try popError(&ring, head: 5)
        #expect(error == .bufferOutsideRAM(direct(5), address: (16 << 20) - 8, length: 16))
        #expect(error?.description == "descriptor 5: address 0xfffff8 + 0x10 is outside guest RAM")
    }

    @Test func addressPlusLengthOverflowIsRefused() throws {
        var ring = try TestRing.make()
        try ring.setDescriptor(0, address: UInt64.max - 3, length: 0xFFFF_FFFF)
        #expect(try popError(&ring) == .bufferOutsideRAM(direct(0), address: UInt64.max - 3, length: 0xFFFF_FFFF))
        var second = try TestRing.make()
        try second.setDescriptor(0, address: UInt64.max, length: 1)
        #expect(try popError(&second) == .bufferOutsideRAM(direct(0), address: UInt64.max, length: 1))
    }

    @Test func headIndexAtOrPastSizeIsRefused() throws {
        var ring = try TestRing.make()
        #expect(try popError(&ring, head: 8) == .headOutOfRange(head: 8, size: 8))
        var second = try TestRing.make()
        #expect(try popError(&second, head: 0xFFFF) == .headOutOfRange(head: 0xFFFF, size: 8))
    }

    @Test func nextIndexAtOrPastSizeIsRefused() throws {
        var ring = try TestRing.make()
        try ring.setDescriptor(0, address: TestRing.buffers, length: 1, flags: DescriptorFlag.next, next: 8)
        #expect(try popError(&ring) == .nextOutOfRange(direct(0), next: 8, tableSize: 8))
    }

    @Test func availableIndexJumpingPastSizeIsRefused() throws {
        var ring = try TestRing.make()
        try ring.setDescriptor(0, address: TestRing.buffers, length: 1)
        var queue = try ring.queue()
        var chain = DescriptorChain(capacity: 8)
        try ring.setAvailableIndex(8)  // exactly the queue size: allowed
        for _ in 0..<8 { #expect(try queue.nextChain(into: &chain)) }
        try ring.setAvailableIndex(17)
        #expect(queue.popError(&chain) == .availableIndexJump(lastSeen: 8, available: 17, size: 8))
        try ring.setAvailableIndex(7)  // backwards is a jump of 65535
        #expect(queue.popError(&chain) == .availableIndexJump(lastSeen: 8, available: 7, size: 8))
    }

    @Test func readableAfterWritableIsRefused() throws {
        var ring = try TestRing.make()
        try ring.setDescriptor(0, address: TestRing.buffers, length: 1, flags: DescriptorFlag.next | DescriptorFlag.write, next: 1)
        try ring.setDescriptor(1, address: TestRing.buffers, length: 1)
        #expect(try popError(&ring) == .readableAfterWritable(direct(1)))
    }

    @Test func readableInIndirectTableAfterWritableDirectIsRefused() throws {
        var ring = try TestRing.make()
        let table = TestRing.buffers
        try ring.setDescriptor(0, address: table + 0x1000, length: 1, table: table)
        try ring.setDescriptor(0, address: table + 0x1000, length: 1, flags: DescriptorFlag.next | DescriptorFlag.write, next: 1)
        try ring.setDescriptor(1, address: table, length: 16, flags: DescriptorFlag.indirect)
        #expect(try popError(&ring) == .readableAfterWritable(inTable(0)))
    }

    @Test func nestedIndirectIsRefused() throws {
        var ring = try TestRing.make()
        let table = TestRing.buffers
        try ring.setDescriptor(0, address: table + 0x1000, length: 1, flags: DescriptorFlag.next, next: 1, table: table)
        try ring.setDescriptor(1, address: table, length: 32, flags: DescriptorFlag.indirect, table: table)
        try ring.setDescriptor(0, address: table, length: 32, flags: DescriptorFlag.indirect)
        #expect(try popError(&ring) == .nestedIndirect(inTable(1)))
    }

    @Test func indirectWithoutTheFeatureIsRefused() throws {
        var ring = try TestRing.make(features: [.version1, .eventIndex])
        try ring.setDescriptor(0, address: TestRing.buffers, length: 16, table: TestRing.buffers)
        try ring.setDescriptor(0, address: TestRing.buffers, length: 16, flags: DescriptorFlag.indirect)
        #expect(try popError(&ring) == .indirectNotNegotiated(direct(0)))
    }

    @Test func indirectWithNextIsRefused() throws {
        var ring = try TestRing.make()
        try ring.setDescriptor(0, address: TestRing.buffers, length: 16, flags: DescriptorFlag.indirect | DescriptorFlag.next, next: 1)
        #expect(try popError(&ring) == .indirectWithNext(direct(0)))
    }

    @Test(arguments: [0, 8, 17, 9 * 16] as [UInt32])
    func indirectTableOfBadLengthIsRefused(length: UInt32) throws {
        var ring = try TestRing.make()
        try ring.setDescriptor(0, address: TestRing.buffers, length: length, flags: DescriptorFlag.indirect)
        #expect(try popError(&ring) == .invalidIndirectLength(direct(0), length: length))
    }

    @Test func indirectTableOutsideRAMIsRefused() throws {
        var ring = try TestRing.make()
        try ring.setDescriptor(0, address: UInt64.max - 15, length: 32, flags: DescriptorFlag.indirect)
        #expect(try popError(&ring) == .indirectTableOutsideRAM(direct(0), address: UInt64.max - 15, length: 32))
    }

    @Test func nextInIndirectTableMustStayInsideIt() throws {
        var ring = try TestRing.make()
        let table = TestRing.buffers
        try ring.setDescriptor(0, address: table + 0x1000, length: 1, flags: DescriptorFlag.next, next: 1, table: table)
        try ring.setDescriptor(1, address: table + 0x1000, length: 1, flags: DescriptorFlag.next, next: 2, table: table)
        try ring.setDescriptor(0, address: table, length: 32, flags: DescriptorFlag.indirect)
        #expect(try popError(&ring) == .nextOutOfRange(inTable(1), next: 2, tableSize: 2))
    }

    @Test func chainOverFourGiBIsRefused() throws {
        // 257 overlapping 16 MiB buffers describe 4 GiB + 16 MiB.
        var ring = try TestRing.make(size: 512)
        for index in 0..<257 {
            try ring.setDescriptor(index, address: 0, length: 16 << 20, flags: index < 256 ? DescriptorFlag.next : 0,
                                   next: UInt16(index + 1))
        }
        #expect(try popError(&ring) == .chainTooLarge(head: 0))
    }

    @Test func errorDescriptionsAreOneLine() {
        let errors: [VirtqueueError] = [
            .invalidQueueSize(3), .misalignedRing(.usedRing, address: 2, alignment: 4),
            .ringOutsideRAM(.availableRing, address: 1, length: 2), .overlappingRings(.usedRing, .availableRing), .availableIndexJump(lastSeen: 1, available: 20, size: 8),
            .headOutOfRange(head: 9, size: 8), .nextOutOfRange(inTable(1), next: 4, tableSize: 2),
            .bufferOutsideRAM(direct(1), address: 5, length: 6), .chainTooLong(head: 1, limit: 8), .chainTooLarge(head: 2),
            .readableAfterWritable(direct(3)), .indirectNotNegotiated(direct(0)), .nestedIndirect(inTable(0)),
            .indirectWithNext(direct(0)), .invalidIndirectLength(direct(0), length: 3),
            .indirectTableOutsideRAM(direct(0), address: 7, length: 16),
        ]
        for error in errors {
            #expect(!error.description.isEmpty && !error.description.contains("\n"))
        }
        #expect(VirtqueueError.nestedIndirect(inTable(4)).description == "indirect descriptor 4: indirect descriptor inside an indirect table")
    }
}

/// Random descriptor tables: never a crash, and every accepted chain obeys the rules.
@Suite struct RandomRingTests {
    @Test func randomTablesParseOrFailCleanly() throws {
        var random = SplitMix64(state: 0x7E53_0001)
        let memory = try GuestMemory(size: 16 << 20)
        let ramSize: UInt64 = 16 << 20
        var accepted = 0
        var refused = 0
        for _ in 0..<2000 {
            let size = UInt16(1) << UInt16.random(in: 0...6, using: &random)
            let features: VirtioFeatures = Bool.random(using: &random) ? [.version1, .indirectDescriptors] : [.version1, .eventIndex]
            var queue = try SplitQueue(memory: memory, size: size, descriptorTable: TestRing.descriptorTable,
                                       availableRing: TestRing.availableRing, usedRing: TestRing.usedRing, features: features)
            // Descriptors: mostly plausible, sometimes wild.
            for index in 0..<Int(size) * 2 {
                let address: UInt64 = switch UInt8.random(in: 0..<8, using: &random) {
                case 0: random.next()
                case 1: ramSize - UInt64.random(in: 0..<64, using: &random)
                default: UInt64.random(in: 0..<ramSize, using: &random)
                }
                let length: UInt32 = Bool.random(using: &random) ? UInt32.random(in: 0..<4096, using: &random) : UInt32(truncatingIfNeeded: random.next())
                // Indirect tables point into the descriptor area at times, so some parse.
                let indirectTarget = TestRing.descriptorTable + 16 * UInt64.random(in: 0..<UInt64(size), using: &random)
                let flags = UInt16.random(in: 0..<8, using: &random)
                let isIndirect = flags & DescriptorFlag.indirect != 0
                let at = index < Int(size) ? TestRing.descriptorTable + 16 * UInt64(index) : 0x80_0000 + 16 * UInt64(index)
                try memory.store(isIndirect ? indirectTarget : address, at: at)
                try memory.store(isIndirect ? 16 * UInt32.random(in: 0...UInt32(size), using: &random) : length, at: at + 8)
                try memory.store(flags, at: at + 12)
                try memory.store(UInt16.random(in: 0..<(size + 2), using: &random), at: at + 14)
            }
            for slot in 0..<UInt64(size) {
                try memory.store(UInt16.random(in: 0..<(size + 1), using: &random), at: TestRing.availableRing + 4 + 2 * slot)
            }
            try memory.store(UInt16.random(in: 0...(size + 1), using: &random), at: TestRing.availableRing + 2)
            var chain = DescriptorChain(capacity: Int(size))
            var pops = 0
            while pops <= Int(size) {
                do {
                    guard try queue.nextChain(into: &chain) else { break }
                } catch {
                    refused += 1
                    break
                }
                pops += 1
                accepted += 1
                #expect(chain.head < size)
                #expect(chain.count >= 1 && chain.count <= Int(size))
                #expect(chain.prefix(chain.readableCount).allSatisfy { !$0.isWrite })
                #expect(chain.dropFirst(chain.readableCount).allSatisfy { $0.isWrite })
                #expect(chain.readableLength + chain.writableLength <= 1 << 32)
                for segment in chain { #expect(memory.contains(segment.address, length: UInt64(segment.length))) }
                queue.addUsed(head: chain.head, length: 0)
            }
            #expect(pops <= Int(size))
            _ = queue.needsNotification()
            _ = queue.enableNotifications()
        }
        #expect(accepted > 100 && refused > 100)
    }
}

import GuestMemory
import Qcow2
import TestSupport
import Testing
import Virtio
import VirtioDevices

private let sector = 512

@Suite struct BlockTests {
    @Test func offersFeatures() throws {
        let writable = try Harness(.raw).device
        #expect(writable.deviceType == .block)
        #expect(writable.queueCount == 1)
        #expect(writable.maximumQueueSize(0) == Harness.queueSize)
        #expect(writable.features == VirtioFeatures(bits: [32, 29, 28, 14, 13, 9, 6, 2]))
        let readOnly = try Harness(.raw, readOnly: true).device
        #expect(readOnly.features == VirtioFeatures(bits: [32, 29, 28, 9, 6, 5, 2]))
    }

    @Test func configurationSpace() throws {
        let device = try Harness(.raw, size: 3 << 20).device
        #expect(device.configurationSize == 60)
        var bytes = [UInt8](repeating: 0xAA, count: 64)
        bytes.withUnsafeMutableBytes { device.readConfiguration(offset: 0, into: $0) }
        var expected = [UInt8](repeating: 0, count: 64)
        func put(_ value: UInt64, at offset: Int, width: Int) {
            for index in 0..<width { expected[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        put(6144, at: 0, width: 8)  // capacity: 3 MiB in sectors
        put(14, at: 12, width: 4)  // seg_max
        put(512, at: 20, width: 4)  // blk_size
        put(1 << 17, at: 36, width: 4)  // max_discard_sectors
        put(1, at: 40, width: 4)  // max_discard_seg
        put(8, at: 44, width: 4)  // discard_sector_alignment
        put(1 << 17, at: 48, width: 4)  // max_write_zeroes_sectors
        put(1, at: 52, width: 4)  // max_write_zeroes_seg
        put(1, at: 56, width: 1)  // write_zeroes_may_unmap
        #expect(bytes == expected)

        // A read in the middle of a field, and one past the end.
        var middle = [UInt8](repeating: 0xAA, count: 2)
        middle.withUnsafeMutableBytes { device.readConfiguration(offset: 1, into: $0) }
        #expect(middle == [0x18, 0])
        var beyond = [UInt8](repeating: 0xAA, count: 4)
        beyond.withUnsafeMutableBytes { device.readConfiguration(offset: 100, into: $0) }
        #expect(beyond == [0, 0, 0, 0])

        let readOnly = try Harness(.raw, readOnly: true).device
        var roBytes = [UInt8](repeating: 0xAA, count: 60)
        roBytes.withUnsafeMutableBytes { readOnly.readConfiguration(offset: 0, into: $0) }
        #expect(roBytes[36..<60].allSatisfy { $0 == 0 })
        #expect(roBytes[0..<8] == [0, 8, 0, 0, 0, 0, 0, 0])
    }

    @Test(arguments: BackendKind.allCases, [0, 3]) func writeThenRead(kind: BackendKind, ioWorkers: Int) throws {
        var harness = try Harness(kind, ioWorkers: ioWorkers)
        let data = pattern(8 * sector, seed: 7)
        let write = try harness.request(Block.RequestType.write, sector: 3, out: data, split: 700)
        #expect(write.status == Block.Status.ok)
        #expect(write.used == 1)
        let read = try harness.request(Block.RequestType.read, sector: 3, inLength: 8 * sector, split: 300)
        #expect(read.status == Block.Status.ok)
        #expect(read.used == UInt32(8 * sector + 1))
        #expect(read.data == data)
        // Indirect, one segment, straddling the written range.
        let indirect = try harness.request(Block.RequestType.read, sector: 2, inLength: 10 * sector, indirect: true)
        #expect(indirect.status == Block.Status.ok)
        #expect(indirect.data == [UInt8](repeating: 0, count: sector) + data + [UInt8](repeating: 0, count: sector))
        #expect(harness.interrupt.usedBuffers == 3)
        #expect(!harness.interrupt.needsReset)
    }

    @Test(arguments: BackendKind.allCases) func headerSplitAcrossSegments(kind: BackendKind) throws {
        var harness = try Harness(kind)
        let data = pattern(sector, seed: 1)
        _ = try harness.request(Block.RequestType.write, sector: 0, out: data)
        try harness.memory.store(Block.RequestType.read, at: Harness.headerAddress)
        try harness.memory.store(UInt64(0), at: Harness.headerAddress + 8)
        let used = try harness.submit([
            ChainBuffer(address: Harness.headerAddress, length: 5, isWrite: false),
            ChainBuffer(address: Harness.headerAddress + 5, length: 11, isWrite: false),
            ChainBuffer(address: Harness.inAddress, length: UInt32(sector) + 1, isWrite: true),
        ])
        // The status is the last byte of the last writable segment, which here also holds data.
        #expect(used == UInt32(sector + 1))
        #expect(try harness.memory.bytes(at: Harness.inAddress, count: sector) == data)
        #expect(try harness.memory.load(UInt8.self, at: Harness.inAddress + UInt64(sector)) == Block.Status.ok)
    }

    @Test(arguments: BackendKind.allCases, [0, 3]) func flushAndGetID(kind: BackendKind, ioWorkers: Int) throws {
        var harness = try Harness(kind, ioWorkers: ioWorkers)
        let flush = try harness.request(Block.RequestType.flush)
        #expect(flush.status == Block.Status.ok)
        #expect(flush.used == 1)
        let id = try harness.request(Block.RequestType.getID, inLength: 20)
        #expect(id.status == Block.Status.ok)
        #expect(id.used == 21)
        #expect(id.data == Array("tern-disk-0".utf8) + [UInt8](repeating: 0, count: 9))
        let short = try harness.request(Block.RequestType.getID, inLength: 4)
        #expect(short.data == Array("tern".utf8))
        #expect(short.used == 5)
        // Flush with data is the wrong shape.
        let flushWithData = try harness.request(Block.RequestType.flush, inLength: sector)
        #expect(flushWithData.status == Block.Status.ioError)
    }

    @Test(arguments: BackendKind.allCases) func writeZeroesAndDiscard(kind: BackendKind) throws {
        var harness = try Harness(kind)
        let data = pattern(16 * sector, seed: 3)
        #expect(try harness.request(Block.RequestType.write, sector: 8, out: data).status == Block.Status.ok)
        let zero = try harness.request(
            Block.RequestType.writeZeroes, out: zeroingSegment(sector: 8, count: 8, flags: 1))
        #expect(zero.status == Block.Status.ok)
        #expect(zero.used == 1)
        let read = try harness.request(Block.RequestType.read, sector: 8, inLength: 16 * sector)
        #expect(read.data == [UInt8](repeating: 0, count: 8 * sector) + data[(8 * sector)...])

        let discard = try harness.request(Block.RequestType.discard, out: zeroingSegment(sector: 16, count: 8))
        #expect(discard.status == Block.Status.ok)
        if kind == .qcow2 {
            // Without a backing file, discarded qcow2 clusters read as zeros.
            let after = try harness.request(Block.RequestType.read, sector: 16, inLength: 8 * sector)
            #expect(after.data == [UInt8](repeating: 0, count: 8 * sector))
        }
    }

    @Test func zeroingValidation() throws {
        var harness = try Harness(.raw)
        let capacity = harness.device.capacity
        // UNMAP is undefined for DISCARD, and reserved bits for both.
        #expect(
            try harness.request(Block.RequestType.discard, out: zeroingSegment(sector: 0, count: 1, flags: 1)).status
                == Block.Status.unsupported)
        #expect(
            try harness.request(Block.RequestType.writeZeroes, out: zeroingSegment(sector: 0, count: 1, flags: 2))
                .status == Block.Status.unsupported)
        // Over the limit, past the end, more than one segment, a short segment.
        #expect(
            try harness.request(
                Block.RequestType.writeZeroes, out: zeroingSegment(sector: 0, count: Block.maximumZeroingSectors + 1)
            ).status == Block.Status.ioError)
        #expect(
            try harness.request(Block.RequestType.discard, out: zeroingSegment(sector: capacity - 1, count: 2))
                .status == Block.Status.ioError)
        #expect(
            try harness.request(Block.RequestType.discard, out: zeroingSegment(sector: UInt64.max, count: 1))
                .status == Block.Status.ioError)
        let two = zeroingSegment(sector: 0, count: 1) + zeroingSegment(sector: 4, count: 1)
        #expect(try harness.request(Block.RequestType.discard, out: two).status == Block.Status.ioError)
        #expect(try harness.request(Block.RequestType.discard, out: [0, 0, 0, 0]).status == Block.Status.ioError)
        // Exactly up to the end is fine.
        #expect(
            try harness.request(Block.RequestType.writeZeroes, out: zeroingSegment(sector: capacity - 2, count: 2))
                .status == Block.Status.ok)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func zeroingNotNegotiated() throws {
        var acknowledged = try Harness(.raw).device.features
        acknowledged.subtract([Block.Feature.discard, Block.Feature.writeZeroes])
        var harness = try Harness(.raw, acknowledged: acknowledged)
        #expect(
            try harness.request(Block.RequestType.discard, out: zeroingSegment(sector: 0, count: 1)).status
                == Block.Status.unsupported)
        #expect(
            try harness.request(Block.RequestType.writeZeroes, out: zeroingSegment(sector: 0, count: 1)).status
                == Block.Status.unsupported)
    }

    @Test(arguments: BackendKind.allCases) func readOnlyRefusesWrites(kind: BackendKind) throws {
        var harness = try Harness(kind, readOnly: true)
        #expect(harness.device.features.contains(Block.Feature.readOnly))
        let write = try harness.request(Block.RequestType.write, sector: 0, out: pattern(sector, seed: 9))
        #expect(write.status == Block.Status.ioError)
        let read = try harness.request(Block.RequestType.read, sector: 0, inLength: sector)
        #expect(read.status == Block.Status.ok)
        #expect(read.data == [UInt8](repeating: 0, count: sector))
        #expect(
            try harness.request(Block.RequestType.writeZeroes, out: zeroingSegment(sector: 0, count: 1)).status
                == Block.Status.unsupported)
        #expect(try harness.request(Block.RequestType.flush).status == Block.Status.ok)
    }

    @Test(arguments: [0, 3]) func semanticErrorsKeepTheQueueGoing(ioWorkers: Int) throws {
        var harness = try Harness(.raw, ioWorkers: ioWorkers)
        let capacity = harness.device.capacity
        let cases: [(UInt32, UInt64, [UInt8], Int, UInt8)] = [
            (Block.RequestType.read, capacity - 1, [], 2 * sector, Block.Status.ioError),  // past the end
            (Block.RequestType.read, UInt64.max, [], sector, Block.Status.ioError),  // overflowing sector
            (Block.RequestType.write, capacity, pattern(sector, seed: 0), 0, Block.Status.ioError),
            (Block.RequestType.read, 0, [], 100, Block.Status.ioError),  // not a whole sector
            (Block.RequestType.write, 0, pattern(100, seed: 0), 0, Block.Status.ioError),
            (Block.RequestType.read, 0, pattern(sector, seed: 0), sector, Block.Status.ioError),  // data both ways
            (Block.RequestType.write, 0, pattern(sector, seed: 0), sector, Block.Status.ioError),
            (Block.RequestType.getID, 0, [], 0, Block.Status.ioError),  // nowhere to put the ID
            (99, 0, [], 0, Block.Status.unsupported),
            (Block.RequestType.read, capacity - 1, [], sector, Block.Status.ok),  // the last sector
        ]
        for (type, at, out, inLength, status) in cases {
            let result = try harness.request(type, sector: at, out: out, inLength: inLength)
            #expect(result.status == status, "type \(type) sector \(at)")
        }
        #expect(!harness.interrupt.needsReset)
    }

    @Test(arguments: [0, 3]) func malformedChainsNeedReset(ioWorkers: Int) throws {
        let header = ChainBuffer(address: Harness.headerAddress, length: 16, isWrite: false)
        let status = ChainBuffer(address: Harness.statusAddress, length: 1, isWrite: true)
        let chains: [[ChainBuffer]] = [
            [header, ChainBuffer(address: Harness.statusAddress, length: 1, isWrite: false)],  // readable status
            [header],  // no status at all
            [header, ChainBuffer(address: Harness.statusAddress, length: 0, isWrite: true)],  // empty status segment
            [ChainBuffer(address: Harness.headerAddress, length: 8, isWrite: false), status],  // header too short
            [header, ChainBuffer(address: 0xFFFF_0000_0000, length: 512, isWrite: true), status],  // outside RAM
        ]
        for buffers in chains {
            var harness = try Harness(.raw, ioWorkers: ioWorkers)
            try harness.memory.store(Block.RequestType.read, at: Harness.headerAddress)
            #expect(try harness.submit(buffers) == nil)
            #expect(harness.interrupt.needsReset)
            // The device stays stopped until reset.
            #expect(try harness.request(Block.RequestType.flush).used == nil)
        }
    }

    @Test(arguments: [0, 3]) func backendErrorsAreIOErrors(ioWorkers: Int) throws {
        var harness = try Harness(backend: FailingBackend(), ioWorkers: ioWorkers)
        #expect(try harness.request(Block.RequestType.read, inLength: sector).status == Block.Status.ioError)
        #expect(try harness.request(Block.RequestType.write, out: pattern(sector, seed: 2)).status == Block.Status.ioError)
        #expect(try harness.request(Block.RequestType.flush).status == Block.Status.ioError)
        let segment = zeroingSegment(sector: 0, count: 1)
        #expect(try harness.request(Block.RequestType.discard, out: segment).status == Block.Status.ioError)
        #expect(try harness.request(Block.RequestType.writeZeroes, out: segment).status == Block.Status.ioError)
        #expect(!harness.interrupt.needsReset)
    }

    @Test func activationNeedsTheQueue() throws {
        var harness = try Harness(.raw)
        harness.device.reset()
        #expect(throws: VirtioDeviceError.self) {
            try harness.device.activate(features: harness.device.features, queues: [nil], interrupt: harness.interrupt)
        }
        let large = try SplitQueue(
            memory: harness.memory, size: 32, descriptorTable: Harness.descriptorTable,
            availableRing: Harness.availableRing, usedRing: Harness.usedRing, features: harness.device.features)
        #expect(throws: VirtioDeviceError.self) {
            try harness.device.activate(features: harness.device.features, queues: [large], interrupt: harness.interrupt)
        }
    }

    @Test func resetStopsTheDevice() throws {
        var harness = try Harness(.raw)
        harness.device.reset()
        #expect(try harness.request(Block.RequestType.flush).used == nil)
        #expect(!harness.interrupt.needsReset)
    }
}

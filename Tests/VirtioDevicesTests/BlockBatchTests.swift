import GuestMemory
import Qcow2
import TestSupport
import Testing
import Virtio
@testable import VirtioDevices

/// Many requests made available at once and served in one notification: with I/O workers their reads and writes
/// run in parallel, yet every request completes with the right status, used length and data, and requests that
/// are not reads or writes wait for the ones before them.
@Suite struct BlockBatchTests {
    static let sector = 512

    /// Places `requests` (type, sector, bytes out, bytes in) as chains 3i..3i+2 in the harness's ring, publishes them
    /// all, notifies once, and returns each request's status, used length and data read.
    static func submitAll(
        _ harness: inout Harness, _ requests: [(type: UInt32, sector: UInt64, out: [UInt8], inLength: Int)]
    ) throws -> [(status: UInt8, used: UInt32?, data: [UInt8])] {
        let memory = harness.memory
        let usedBefore = try harness.ring.usedIndex()
        try harness.ring.adoptIndices()
        for (index, request) in requests.enumerated() {
            let header = Harness.headerAddress + 64 * UInt64(index)
            let status = Harness.statusAddress + UInt64(index)
            let data = Harness.outAddress + 0x1_0000 * UInt64(index)
            try memory.store(request.type, at: header)
            try memory.store(UInt32(0), at: header + 4)
            try memory.store(request.sector, at: header + 8)
            try memory.store(UInt8(0xFF), at: status)
            try memory.write(request.out + [UInt8](repeating: 0xEE, count: request.inLength), at: data)
            let length = max(request.out.count, request.inLength)
            var chain = [ChainBuffer(address: header, length: 16, isWrite: false)]
            if length > 0 {
                chain.append(ChainBuffer(address: data, length: UInt32(length), isWrite: request.inLength > 0))
            }
            chain.append(ChainBuffer(address: status, length: 1, isWrite: true))
            let head = UInt16(3 * index)
            try harness.ring.writeChain(chain, head: head)
            try harness.ring.makeAvailable(head)
        }
        harness.device.notify(queue: 0)
        let usedAfter = try harness.ring.usedIndex()
        var usedLength: [Int: UInt32] = [:]
        var position = usedBefore
        while position != usedAfter {
            let element = try harness.ring.usedElement(Int(position))
            usedLength[Int(element.id) / 3] = element.length
            position &+= 1
        }
        return try requests.indices.map { index in
            (try memory.load(at: Harness.statusAddress + UInt64(index)), usedLength[index],
             try memory.bytes(at: Harness.outAddress + 0x1_0000 * UInt64(index), count: requests[index].inLength))
        }
    }

    @Test(arguments: BackendKind.allCases, [0, 4])
    func oneNotificationServesTheWholeQueue(kind: BackendKind, ioWorkers: Int) throws {
        var harness = try Harness(kind, ioWorkers: ioWorkers)
        let capacity = harness.device.capacity
        // Three writes, a flush and an out-of-range read (IOERR, completed at once): five chains fill the 16 slots...
        var requests: [(type: UInt32, sector: UInt64, out: [UInt8], inLength: Int)] = (0..<3).map {
            (Block.RequestType.write, UInt64(8 * $0), pattern(4096, seed: UInt8($0)), 0)
        }
        requests.append((Block.RequestType.flush, 0, [], 0))
        requests.append((Block.RequestType.read, capacity, [], Self.sector))
        let first = try Self.submitAll(&harness, requests)
        for index in 0..<3 {
            #expect(first[index].status == Block.Status.ok, "write \(index)")
            #expect(first[index].used == 1)
        }
        #expect(first[3].status == Block.Status.ok && first[3].used == 1)
        #expect(first[4].status == Block.Status.ioError)
        // ...two more writes around a GET_ID...
        let second = try Self.submitAll(&harness, [
            (Block.RequestType.write, 24, pattern(4096, seed: 3), 0), (Block.RequestType.getID, 0, [], 20),
            (Block.RequestType.write, 32, pattern(4096, seed: 4), 0),
        ])
        #expect(second.map(\.status) == [Block.Status.ok, Block.Status.ok, Block.Status.ok])
        #expect(second[1].used == 21 && Array(second[1].data.prefix(11)) == Array("tern-disk-0".utf8))
        // ...then five reads of what the writes left, in one more notification.
        let reads = try Self.submitAll(&harness, (0..<5).map { (Block.RequestType.read, UInt64(8 * $0), [], 4096) })
        for index in 0..<5 {
            #expect(reads[index].status == Block.Status.ok)
            #expect(reads[index].used == 4097)
            #expect(reads[index].data == pattern(4096, seed: UInt8(index)), "read \(index)")
        }
        #expect(!harness.interrupt.needsReset)
    }
}

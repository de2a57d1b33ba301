import GuestMemory
import Virtio

/// A split virtqueue laid out in 16 MiB of guest RAM the way a driver would, with helpers to write
/// descriptors and publish chains.
struct TestRing {
    static let descriptorTable: UInt64 = 0x10_0000
    static let availableRing: UInt64 = 0x20_0000
    static let usedRing: UInt64 = 0x30_0000
    /// Where tests put buffers and indirect tables.
    static let buffers: UInt64 = 0x40_0000

    let memory: GuestMemory
    let size: UInt16
    let features: VirtioFeatures
    /// The driver's avail.idx.
    private(set) var availableIndex: UInt16 = 0

    init(size: UInt16 = 8, features: VirtioFeatures = [.version1, .indirectDescriptors, .eventIndex]) throws {
        memory = try GuestMemory(size: 16 << 20)
        self.size = size
        self.features = features
    }

    func queue() throws -> SplitQueue {
        try SplitQueue(
            memory: memory, size: size, descriptorTable: Self.descriptorTable, availableRing: Self.availableRing,
            usedRing: Self.usedRing, features: features)
    }

    /// Writes one 16-byte descriptor into the table at `base` (the queue's table by default).
    func setDescriptor(
        _ index: Int, address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0,
        table base: UInt64 = descriptorTable
    ) throws {
        let at = base + 16 * UInt64(index)
        try memory.store(address, at: at)
        try memory.store(length, at: at + 8)
        try memory.store(flags, at: at + 12)
        try memory.store(next, at: at + 14)
    }

    /// Puts `head` in the next available slot and bumps avail.idx.
    mutating func publish(_ head: UInt16) throws {
        try memory.store(head, at: Self.availableRing + 4 + 2 * UInt64(availableIndex & (size - 1)))
        availableIndex &+= 1
        try memory.store(availableIndex, at: Self.availableRing + 2)
    }

    /// Overwrites avail.idx.
    mutating func setAvailableIndex(_ index: UInt16) throws {
        availableIndex = index
        try memory.store(index, at: Self.availableRing + 2)
    }

    func setAvailableFlags(_ flags: UInt16) throws { try memory.store(flags, at: Self.availableRing) }
    func setUsedEvent(_ index: UInt16) throws { try memory.store(index, at: Self.availableRing + 4 + 2 * UInt64(size)) }
    func usedFlags() throws -> UInt16 { try memory.load(at: Self.usedRing) }
    func usedIndex() throws -> UInt16 { try memory.load(at: Self.usedRing + 2) }
    func availEvent() throws -> UInt16 { try memory.load(at: Self.usedRing + 4 + 8 * UInt64(size)) }

    /// The used element in slot `slot`.
    func usedElement(_ slot: Int) throws -> (id: UInt32, length: UInt32) {
        let at = Self.usedRing + 4 + 8 * UInt64(slot)
        return (try memory.load(at: at), try memory.load(at: at + 4))
    }
}

/// Descriptor flags as a driver writes them.
let descNext: UInt16 = 1
let descWrite: UInt16 = 2
let descIndirect: UInt16 = 4

/// A seeded generator (SplitMix64), so property tests are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension SplitQueue {
    /// Pops one chain, expecting the error it throws.
    mutating func popError(_ chain: inout DescriptorChain) -> VirtqueueError? {
        do {
            _ = try nextChain(into: &chain)
            return nil
        } catch {
            return error
        }
    }
}

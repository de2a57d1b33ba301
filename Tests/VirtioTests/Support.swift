import GuestMemory
import TestSupport
import Virtio

/// Where the tests lay out a split virtqueue in 16 MiB of guest RAM, the way a driver would.
enum TestRing {
    static let descriptorTable: UInt64 = 0x10_0000
    static let availableRing: UInt64 = 0x20_0000
    static let usedRing: UInt64 = 0x30_0000
    /// Where tests put buffers and indirect tables.
    static let buffers: UInt64 = 0x40_0000

    /// A driver ring of `size` entries over fresh guest memory.
    static func make(
        size: UInt16 = 8, features: VirtioFeatures = [.version1, .indirectDescriptors, .eventIndex]
    ) throws -> DriverRing {
        DriverRing(
            memory: try GuestMemory(size: 16 << 20), size: size, descriptorTable: descriptorTable,
            availableRing: availableRing, usedRing: usedRing, features: features)
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

// libFuzzer target: the split virtqueue over a hostile guest. The input becomes the first bytes of guest
// RAM: a header choosing the queue size, ring addresses and features, then the rings and descriptors
// themselves. Every chain the queue accepts must obey the rules; every other must be refused with a
// VirtqueueError. A crash, a hang or an access outside guest RAM is a bug.

import GuestMemory

/// Guest RAM shared by all runs.
let memory = try! GuestMemory(size: GuestMemory.minimumSize)
/// The part of guest RAM the input fills; ring addresses are chosen inside it.
let window = 64 << 10
/// What a run can write: the window and a used ring of 32768 entries starting at its end. Cleared before
/// each run, so runs do not depend on one another.
let cleared = UInt64(window + 4 + 8 * 32768 + 2)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtqueue(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 8 else { return 0 }
    let bytes = UnsafeRawBufferPointer(start: data, count: min(size, window))
    try! memory.zero(at: 0, length: cleared)
    try! memory.write(bytes, at: 0)
    // Header: [0] log2 queue size, [1] features, [2...7] ring addresses in units of the ring alignment.
    let queueSize = UInt16(1) << UInt16(bytes[0] & 15)
    var features: VirtioFeatures = .version1
    if bytes[1] & 1 != 0 { features.insert(.eventIndex) }
    if bytes[1] & 2 != 0 { features.insert(.indirectDescriptors) }
    func address(_ offset: Int, unit: UInt64) -> UInt64 {
        (UInt64(bytes[offset]) | UInt64(bytes[offset + 1]) << 8) * unit % UInt64(window)
    }
    guard var queue = try? SplitQueue(
        memory: memory, size: queueSize, descriptorTable: address(2, unit: 16), availableRing: address(4, unit: 2),
        usedRing: address(6, unit: 4), features: features)
    else { return 0 }
    var chain = DescriptorChain(capacity: Int(queueSize))
    var popped = 0
    while true {
        let more: Bool
        do {
            more = try queue.nextChain(into: &chain)
        } catch {
            precondition(!error.description.isEmpty && !error.description.contains("\n"))
            break
        }
        guard more else { break }
        popped += 1
        // Nothing the queue writes can move avail.idx, which announces at most `size` chains.
        precondition(popped <= Int(queueSize), "popped \(popped) chains from a queue of \(queueSize)")
        precondition(chain.head < queueSize)
        precondition(chain.count >= 1 && chain.count <= Int(queueSize))
        var readable: UInt64 = 0
        var writable: UInt64 = 0
        for (position, segment) in chain.enumerated() {
            precondition(segment.isWrite == (position >= chain.readableCount), "readable segment after writable")
            precondition(memory.contains(segment.address, length: UInt64(segment.length)))
            if segment.isWrite { writable += UInt64(segment.length) } else { readable += UInt64(segment.length) }
        }
        precondition(readable == chain.readableLength && writable == chain.writableLength)
        precondition(readable + writable <= 1 << 32)
        queue.addUsed(head: chain.head, length: UInt32(truncatingIfNeeded: writable))
        _ = queue.needsNotification()
    }
    _ = queue.enableNotifications()
    queue.disableNotifications()
    return 0
}

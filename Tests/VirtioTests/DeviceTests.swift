import GuestMemory
import TestSupport
import Testing
import Virtio

/// A minimal entropy-like device: fills every writable buffer with 0xAB.
struct FillDevice: VirtioDevice {
    let memory: GuestMemory
    var queue: SplitQueue?
    var interrupt: (any InterruptSignal)?
    var chain = DescriptorChain(capacity: 8)

    var deviceType: VirtioDeviceType { .entropy }
    var features: VirtioFeatures { [.version1, .eventIndex, .indirectDescriptors] }
    var queueCount: Int { 1 }
    func maximumQueueSize(_ queue: Int) -> UInt16 { 8 }
    var configurationSize: Int { 0 }
    func readConfiguration(offset: Int, into buffer: UnsafeMutableRawBufferPointer) { buffer.initializeMemory(as: UInt8.self, repeating: 0) }
    mutating func writeConfiguration(offset: Int, bytes: UnsafeRawBufferPointer) {}

    mutating func activate(features: VirtioFeatures, queues: [SplitQueue?], interrupt: any InterruptSignal) throws(VirtioDeviceError) {
        guard let first = queues.first, let queue = first else { throw .activation("queue 0 is not enabled") }
        self.queue = queue
        self.interrupt = interrupt
    }

    mutating func notify(queue index: Int) {
        guard var queue, let interrupt else { return }
        defer { self.queue = queue }
        queue.disableNotifications()
        do {
            repeat {
                while try queue.nextChain(into: &chain) {
                    for segment in chain where segment.isWrite {
                        _ = try? memory.pointer(at: segment.address, length: UInt64(segment.length))
                            .initializeMemory(as: UInt8.self, repeating: 0xAB, count: Int(segment.length))
                    }
                    queue.addUsed(head: chain.head, length: UInt32(chain.writableLength))
                }
                if queue.needsNotification() { interrupt.signalUsedBuffers(queue: index) }
            } while queue.enableNotifications()
        } catch {
            interrupt.signalNeedsReset(reason: "test")
            self.queue = nil
        }
    }

    mutating func reset() {
        queue = nil
        interrupt = nil
    }
}

@Suite struct DeviceTests {
    @Test func deviceDrainsItsQueueThroughTheProtocol() throws {
        var ring = try TestRing.make()
        try ring.setDescriptor(0, address: TestRing.buffers, length: 32, flags: DescriptorFlag.write)
        try ring.makeAvailable(0)
        var device: any VirtioDevice = FillDevice(memory: ring.memory)
        let interrupt = RecordingInterrupt()
        let negotiation = FeatureNegotiation(offered: device.features)
        try device.activate(features: negotiation.offered, queues: [ring.queue()], interrupt: interrupt)
        device.notify(queue: 0)
        #expect(try ring.memory.bytes(at: TestRing.buffers, count: 32) == Array(repeating: 0xAB, count: 32))
        #expect(try ring.usedElement(0) == (0, 32))
        #expect(interrupt.usedQueues == [0])
        #expect(try ring.availEvent() == 1)

        // A loop in the next chain puts the device into NEEDS_RESET.
        try ring.setDescriptor(1, address: TestRing.buffers, length: 1, flags: DescriptorFlag.next, next: 1)
        try ring.makeAvailable(1)
        device.notify(queue: 0)
        #expect(interrupt.needsReset)
    }

    @Test func activationWithoutTheQueueFails() throws {
        let ring = try TestRing.make()
        var device = FillDevice(memory: ring.memory)
        #expect(throws: VirtioDeviceError.activation("queue 0 is not enabled")) {
            try device.activate(features: [.version1], queues: [nil], interrupt: RecordingInterrupt())
        }
    }
}

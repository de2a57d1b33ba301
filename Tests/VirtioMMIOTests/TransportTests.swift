import TestSupport
import Testing
import Virtio
import VirtioMMIO

@Suite struct TransportTests {
    @Test func linuxDriverGetsRandomBytes() throws {
        let guest = try Guest()
        #expect(guest.read(Reg.magic) == 0x7472_6976)
        #expect(guest.read(Reg.version) == 2)
        #expect(guest.read(Reg.deviceID) == 4)
        #expect(guest.read(Reg.vendorID) == VirtioMMIOTransport.vendorID)
        #expect(guest.transport.mmioSize == 0x200)

        #expect(guest.negotiate())
        #expect(guest.status == Status.acknowledge | Status.driver | Status.featuresOK)
        guest.write(Reg.deviceFeaturesSel, 1)
        #expect(guest.read(Reg.deviceFeatures) == 1)  // VERSION_1 is bit 32
        guest.write(Reg.queueSel, 0)
        #expect(guest.read(Reg.queueReady) == 0)
        #expect(guest.read(Reg.queueNumMax) == 8)
        guest.setUpQueue()
        #expect(guest.read(Reg.queueReady) == 1)
        guest.addStatus(Status.driverOK)
        #expect(guest.status == Status.acknowledge | Status.driver | Status.featuresOK | Status.driverOK)
        #expect(guest.read(Reg.interruptStatus) == 0)
        #expect(!guest.line.isAsserted)

        try guest.offer()
        #expect(try guest.usedIndex() == 1)
        #expect(try guest.usedElement(0) == (0, 64))
        #expect(try guest.memory.bytes(at: Guest.buffer, count: 64) != Array(repeating: Guest.pattern, count: 64))
        #expect(guest.read(Reg.interruptStatus) == 1)
        #expect(guest.line.isAsserted)
        guest.write(Reg.interruptACK, 1)
        #expect(guest.read(Reg.interruptStatus) == 0)
        #expect(!guest.line.isAsserted)

        // A second request lands in the next used slot; no configuration space to speak of.
        try guest.offer(length: 16)
        #expect(try guest.usedIndex() == 2)
        #expect(try guest.usedElement(1) == (0, 16))
        #expect(guest.read(Reg.config) == 0)
        #expect(guest.status & Status.needsReset == 0)

        // Reset clears everything, queue readiness included.
        guest.write(Reg.status, 0)
        #expect(guest.status == 0)
        #expect(guest.read(Reg.queueReady) == 0)
        #expect(!guest.line.isAsserted)
    }

    @Test func identityRegistersAreConstant() throws {
        let guest = try Guest()
        for offset in [Reg.magic, Reg.version, Reg.deviceID, Reg.vendorID] { guest.write(offset, 0xDEAD_BEEF) }
        #expect(guest.read(Reg.magic) == 0x7472_6976)
        #expect(guest.read(Reg.version) == 2)
        #expect(guest.read(Reg.deviceID) == 4)
        // Narrow, wide and unaligned accesses below 0x100 read as zero.
        var half: UInt16 = 0xFFFF
        withUnsafeMutableBytes(of: &half) { guest.transport.read(offset: Reg.magic, into: $0) }
        #expect(half == 0)
        var wide: UInt64 = .max
        withUnsafeMutableBytes(of: &wide) { guest.transport.read(offset: Reg.magic, into: $0) }
        #expect(wide == 0)
        #expect(guest.read(Reg.magic + 2) == 0)
    }

    @Test func featuresOKIsRefusedWithoutVersion1() throws {
        let guest = try Guest()
        #expect(!guest.negotiate(mask: ~(1 << 32)))
        #expect(guest.status == Status.acknowledge | Status.driver)
        // A driver that carries on anyway gets NEEDS_RESET, not a device.
        guest.setUpQueue()
        guest.addStatus(Status.driverOK)
        #expect(guest.status & Status.needsReset != 0)
        #expect(guest.read(Reg.interruptStatus) == 2)
        #expect(guest.line.isAsserted)

        // Acknowledging a bit the device never offered is refused too.
        #expect(!guest.negotiate(mask: ~(1 << 32)))
        guest.write(Reg.driverFeaturesSel, 0)
        guest.write(Reg.driverFeatures, 1)
        guest.write(Reg.driverFeaturesSel, 1)
        guest.write(Reg.driverFeatures, 1)
        guest.addStatus(Status.featuresOK)
        #expect(guest.status & Status.featuresOK == 0)
        #expect(try guest.completesRequest())
    }

    static let badPlacements: [(descriptors: UInt64, available: UInt64, used: UInt64)] = [
        (0x1F_FFC0, Guest.available, Guest.used),  // descriptor table runs off the end of RAM
        (Guest.descriptors, Guest.available, 0x1_0000_0000),  // used ring above RAM
        (Guest.descriptors, Guest.available, Guest.descriptors + 64),  // used ring over the descriptor table
        (Guest.descriptors, Guest.available, Guest.available),  // used ring over the available ring
        (Guest.descriptors + 8, Guest.available, Guest.used),  // misaligned descriptor table
    ]

    @Test(arguments: badPlacements)
    func badRingPlacementNeedsReset(placement: (descriptors: UInt64, available: UInt64, used: UInt64)) throws {
        let guest = try Guest()
        #expect(guest.negotiate())
        guest.setUpQueue(descriptors: placement.descriptors, available: placement.available, used: placement.used)
        guest.addStatus(Status.driverOK)
        #expect(guest.status & Status.needsReset != 0)
        #expect(guest.read(Reg.interruptStatus) & 2 != 0)
        #expect(guest.line.isAsserted)
        guest.write(Reg.queueNotify, 0)  // ignored: the device never started
        #expect(try guest.usedIndex() == 0)
        #expect(try guest.completesRequest())
    }

    @Test func queueSizeMustBeAPowerOfTwoWithinTheMaximum() throws {
        let guest = try Guest()
        #expect(guest.negotiate())
        guest.setUpQueue(size: 3)  // never latched: the queue has no size at DRIVER_OK
        guest.addStatus(Status.driverOK)
        #expect(guest.status & Status.needsReset != 0)

        #expect(guest.negotiate())
        guest.write(Reg.queueSel, 0)
        guest.write(Reg.queueNum, 8)
        // Each refused; 16 would overrun the device's 8-entry chain buffer.
        for bad: UInt32 in [3, 0, 16, 0xFFFF_FFF8] { guest.write(Reg.queueNum, bad) }
        guest.setUpQueue(size: nil)
        guest.addStatus(Status.driverOK)
        try guest.offer()
        #expect(try guest.usedElement(0) == (0, 64))
        #expect(guest.status & Status.needsReset == 0)
    }

    @Test func queueRegistersFreezeOnceReadyAndAtDriverOK() throws {
        let guest = try Guest()
        #expect(guest.negotiate())
        guest.setUpQueue()
        guest.write(Reg.descHigh, 0xFFFF)  // queue ready: ignored
        guest.write(Reg.queueNum, 4)
        guest.addStatus(Status.driverOK)
        guest.write(Reg.queueReady, 0)  // after DRIVER_OK: ignored
        #expect(guest.read(Reg.queueReady) == 1)
        guest.write(Reg.queueSel, 7)  // no such queue
        #expect(guest.read(Reg.queueNumMax) == 0)
        #expect(guest.read(Reg.queueReady) == 0)
        try guest.offer()
        #expect(try guest.usedElement(0) == (0, 64))
        #expect(guest.status & Status.needsReset == 0)
    }

    @Test func readableDescriptorNeedsReset() throws {
        let guest = try Guest()
        #expect(guest.negotiate())
        guest.setUpQueue()
        guest.addStatus(Status.driverOK)
        try guest.offer(flags: 0)
        #expect(try guest.usedIndex() == 0)
        #expect(guest.status & Status.needsReset != 0)
        #expect(guest.read(Reg.interruptStatus) == 2)
        #expect(guest.line.isAsserted)
        try guest.offer()  // the device is stopped until reset
        #expect(try guest.usedIndex() == 0)
        #expect(try guest.completesRequest())
    }

    @Test func randomRegisterTrafficNeverTraps() throws {
        let guest = try Guest()
        var random = SplitMix64(state: 0x5445_524E)
        let addresses: [UInt64] = [0, Guest.descriptors, Guest.available, Guest.used, 0x1F_FFF8, 0xFFFF_FFFF]
        for _ in 0..<10_000 {
            // Mostly aligned registers; a quarter anywhere, unaligned and past the window included.
            let offset: UInt64 =
                random.next() % 4 == 0
                ? UInt64.random(in: 0..<0x210, using: &random) : UInt64.random(in: 0..<0x40, using: &random) * 4
            let width = [1, 2, 4, 4, 4, 8].randomElement(using: &random)!
            var value: UInt64 =
                switch random.next() % 4 {
                case 0: UInt64(1) << (random.next() % 8)
                case 1: addresses.randomElement(using: &random)!
                case 2: random.next() % 16
                default: random.next()
                }
            if random.next() % 3 == 0 {
                withUnsafeMutableBytes(of: &value) {
                    guest.transport.read(offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<width]))
                }
            } else {
                withUnsafeBytes(of: value.littleEndian) {
                    guest.transport.write(offset: offset, from: UnsafeRawBufferPointer(rebasing: $0[0..<width]))
                }
            }
            if random.next() % 64 == 0 {
                guest.write(Reg.status, guest.status | UInt32(1) << (random.next() % 8))
            }
        }
        #expect(guest.read(Reg.magic) == 0x7472_6976)
        #expect(try guest.completesRequest())
    }
}

import PCI
import TestSupport
import Testing
import Virtio
import VirtioPCI

@Suite struct VirtioPCITests {
    @Test func capabilityWalkFindsEveryStructure() throws {
        let machine = try Machine()
        let list = machine.capabilityList()
        #expect(list.map(\.id) == [0x09, 0x09, 0x09, 0x09, 0x09, 0x11])
        let caps = machine.virtioCapabilities()
        #expect(caps.map(\.type) == VirtioPCICapabilityType.allCases.map(\.rawValue))
        #expect(caps.allSatisfy { $0.bar == 0 })
        let byType = Dictionary(uniqueKeysWithValues: caps.map { ($0.type, $0) })
        #expect(byType[1]?.offset == 0x0000 && byType[1]?.length == 0x38)
        #expect(byType[2]?.offset == 0x2000 && byType[2]?.length == 4)
        #expect(byType[3]?.offset == 0x0800 && byType[3]?.length == 1)
        #expect(byType[4]?.offset == 0x1000 && byType[4]?.length == 4)
        let notify = try #require(byType[2])
        #expect(machine.config(notify.position + 2, width: 1) == 20)  // cap_len includes the multiplier
        #expect(machine.config(notify.position + 16) == 4)  // notify_off_multiplier
        let window = try #require(byType[5])
        #expect(machine.config(window.position + 2, width: 1) == 20)
        // MSI-X: two vectors (queue and configuration), table at 0x3000 and PBA at 0x3800 of BAR 0, disabled.
        let msix = try #require(list.last?.position)
        #expect(machine.config(msix + 2, width: 2) == 1)
        #expect(machine.config(msix + 4) == 0x3000)
        #expect(machine.config(msix + 8) == 0x3800)
        // The driver may not rewrite the capabilities (but the configuration-access window's fields).
        machine.setConfig(byType[1]!.position + 8, 0x1234)
        machine.setConfig(msix + 4, 0xFFFF_FFFF)
        #expect(machine.virtioCapabilities().first?.offset == 0)
        #expect(machine.config(msix + 4) == 0x3000)
    }

    @Test func driverInitialisationThroughTheBAR() throws {
        let machine = try Machine()
        machine.enable()
        #expect(machine.bar(Common.numQueues, width: 2) == 1)
        #expect(machine.negotiate())
        #expect(machine.status == Status.acknowledge | Status.driver | Status.featuresOK)
        machine.setBar(Common.deviceFeatureSelect, width: 4, 1)
        #expect(machine.bar(Common.deviceFeature, width: 4) == 1)  // VERSION_1 is bit 32
        machine.setBar(Common.driverFeatureSelect, width: 4, 1)
        #expect(machine.bar(Common.driverFeature, width: 4) == 1)
        machine.setBar(Common.queueSelect, width: 2, 0)
        #expect(machine.bar(Common.queueSize, width: 2) == 8)  // the maximum until the driver picks
        #expect(machine.bar(Common.queueEnable, width: 2) == 0)
        #expect(machine.bar(Common.queueNotifyOff, width: 2) == 0)
        #expect(machine.bar(Common.queueVector, width: 2) == 0xFFFF)
        machine.setBar(Common.queueSize, width: 2, 4)
        #expect(machine.bar(Common.queueSize, width: 2) == 4)
        machine.setUpQueue(size: 8)
        #expect(machine.bar(Common.queueSize, width: 2) == 8)
        #expect(machine.bar(Common.queueEnable, width: 2) == 1)
        #expect(machine.bar(Common.queueDescriptor, width: 8) == Machine.descriptors)
        #expect(machine.bar(Common.queueDevice + 4, width: 4) == 0)
        // A 16-bit read of the middle of a 32-bit field sees those bytes.
        #expect(machine.bar(Common.queueDriver, width: 2) == 0x2000)
        machine.addStatus(Status.driverOK)
        #expect(machine.status == Status.acknowledge | Status.driver | Status.featuresOK | Status.driverOK)
        #expect(!machine.line.isAsserted)

        // INTx mode: the request completes, ISR bit 0 asserts INTA# and the PCI Status interrupt bit.
        try machine.offer()
        #expect(try machine.usedIndex() == 1)
        #expect(try machine.usedElement(0) == (0, 64))
        #expect(try machine.memory.bytes(at: Machine.buffer, count: 64) != Array(repeating: Machine.pattern, count: 64))
        #expect(machine.line.isAsserted)
        #expect(machine.config(Config.status, width: 2) & 0x08 != 0)
        #expect(machine.isr == 1)  // read-to-clear
        #expect(!machine.line.isAsserted)
        #expect(machine.isr == 0)
        #expect(machine.config(Config.status, width: 2) & 0x08 == 0)
        #expect(machine.routing.takeTriggers().isEmpty)

        // Interrupt Disable keeps INTA# low while ISR stays set, and releases it when cleared.
        machine.setConfig(Config.command, width: 2, Config.memorySpace | Config.busMaster | Config.interruptDisable)
        try machine.offer(length: 16)
        #expect(try machine.usedElement(1) == (0, 16))
        #expect(!machine.line.isAsserted)
        #expect(machine.config(Config.status, width: 2) & 0x08 != 0)
        machine.enable()
        #expect(machine.line.isAsserted)
        #expect(machine.isr == 1)
        #expect(!machine.line.isAsserted)

        // Reset clears the device, the queues and the interrupt.
        machine.setBar(Common.status, width: 1, 0)
        #expect(machine.status == 0)
        #expect(machine.bar(Common.queueEnable, width: 2) == 0)
        #expect(machine.bar(Common.queueSize, width: 2) == 8)
        #expect(try machine.completesRequest())
    }

    @Test func queueRulesMatchTheMMIOTransport() throws {
        let machine = try Machine()
        machine.enable()
        #expect(machine.negotiate())
        machine.setBar(Common.queueSelect, width: 2, 0)
        // Sizes that are not a power of two up to the maximum are refused; 0 too.
        for bad: UInt64 in [3, 0, 16, 0xFFF8] { machine.setBar(Common.queueSize, width: 2, bad) }
        #expect(machine.bar(Common.queueSize, width: 2) == 8)
        // queue_enable takes only 1.
        machine.setBar(Common.queueEnable, width: 2, 2)
        #expect(machine.bar(Common.queueEnable, width: 2) == 0)
        machine.setUpQueue()
        machine.setBar(Common.queueDescriptor + 4, width: 4, 0xFFFF)  // enabled: frozen
        machine.setBar(Common.queueSize, width: 2, 4)
        machine.setBar(Common.queueEnable, width: 2, 0)  // the driver may not disable
        #expect(machine.bar(Common.queueDescriptor, width: 8) == Machine.descriptors)
        #expect(machine.bar(Common.queueSize, width: 2) == 8)
        #expect(machine.bar(Common.queueEnable, width: 2) == 1)
        // Notifications before DRIVER_OK are ignored.
        try machine.offer()
        #expect(try machine.usedIndex() == 0)
        machine.addStatus(Status.driverOK)
        // An absent queue reads as unavailable.
        machine.setBar(Common.queueSelect, width: 2, 7)
        #expect(machine.bar(Common.queueSize, width: 2) == 0)
        #expect(machine.bar(Common.queueEnable, width: 2) == 0)
        #expect(machine.bar(Common.queueVector, width: 2) == 0xFFFF)
        // Writes that are not one whole field, or to read-only fields, change nothing.
        machine.setBar(Common.numQueues, width: 2, 9)
        machine.setBar(Common.status, width: 2, 0)
        machine.setBar(Common.queueSelect, width: 4, 0)
        #expect(machine.bar(Common.numQueues, width: 2) == 1)
        #expect(machine.status & Status.driverOK != 0)
        #expect(machine.bar(Common.queueSelect, width: 2) == 7)
        // Notifying an absent queue, or at an odd offset, does nothing; the earlier request is still there.
        machine.setBar(0x2002, width: 2, 0)
        machine.setBar(0x2004, width: 2, 1)
        #expect(try machine.usedIndex() == 0)
        machine.setBar(0x2000, width: 4, 0)
        #expect(try machine.usedIndex() == 1)
        #expect(machine.status & Status.needsReset == 0)
    }

    @Test func notificationsFromTheVMMReachTheDevice() throws {
        let machine = try Machine()
        machine.enable()
        #expect(machine.negotiate())
        machine.setUpQueue()
        machine.transport.notify(queue: 0)  // before DRIVER_OK: ignored
        machine.addStatus(Status.driverOK)
        try machine.memory.store(Machine.buffer, at: Machine.descriptors)
        try machine.memory.store(UInt32(32), at: Machine.descriptors + 8)
        try machine.memory.store(UInt16(2), at: Machine.descriptors + 12)
        try machine.memory.store(UInt16(1), at: Machine.available + 2)
        machine.transport.notify(queue: 3)  // no such queue
        #expect(try machine.usedIndex() == 0)
        machine.transport.notify(queue: 0)  // what the I/O thread does for the queue's ioeventfd
        #expect(try machine.usedElement(0) == (0, 32))
        machine.transport.hostEvent(token: 1, events: .readable)  // the entropy device watches nothing
        #expect(machine.status & Status.needsReset == 0)
    }

    @Test func featuresOKIsRefusedWithoutVersion1() throws {
        let machine = try Machine()
        machine.enable()
        #expect(!machine.negotiate(mask: ~(1 << 32)))
        #expect(machine.status == Status.acknowledge | Status.driver)
        machine.setUpQueue()
        machine.addStatus(Status.driverOK)
        #expect(machine.status & Status.needsReset != 0)
        #expect(machine.errors.all == ["virtio-pci: device needs reset: the driver set DRIVER_OK without FEATURES_OK"])
        #expect(machine.line.isAsserted)
        #expect(machine.isr == 2)
        // Bits the device never offered are refused too.
        #expect(!machine.negotiate(mask: ~(1 << 32)))
        machine.setBar(Common.driverFeatureSelect, width: 4, 0)
        machine.setBar(Common.driverFeature, width: 4, 1)
        machine.setBar(Common.driverFeatureSelect, width: 4, 1)
        machine.setBar(Common.driverFeature, width: 4, 1)
        machine.addStatus(Status.featuresOK)
        #expect(machine.status & Status.featuresOK == 0)
        #expect(try machine.completesRequest())
    }

    @Test func malformedRingNeedsReset() throws {
        let machine = try Machine()
        machine.enable()
        #expect(machine.negotiate())
        machine.setUpQueue()
        machine.addStatus(Status.driverOK)
        try machine.offer(flags: 0)  // device-readable: the entropy device only writes
        #expect(try machine.usedIndex() == 0)
        #expect(machine.status & Status.needsReset != 0)
        #expect(machine.errors.all.count == 1)
        #expect(machine.isr == 2)
        try machine.offer()  // stopped until reset
        #expect(try machine.usedIndex() == 0)
        #expect(try machine.completesRequest())
        #expect(machine.status & Status.needsReset == 0)

        // Rings outside RAM are caught at DRIVER_OK.
        #expect(machine.negotiate())
        machine.setUpQueue(used: 0x1_0000_0000)
        machine.addStatus(Status.driverOK)
        #expect(machine.status & Status.needsReset != 0)
        #expect(machine.errors.all.last?.contains("used ring") == true)
    }

    @Test func msixDeliveryMaskingAndPendingBits() throws {
        let machine = try Machine()
        machine.enable()
        let msix = try #require(machine.capabilityList().last?.position)
        let table = Machine.barBase + 0x3000
        let pba = Machine.barBase + 0x3800
        // Entries start masked; the driver programs them, then enables MSI-X (Linux masks the function meanwhile).
        #expect(machine.readMMIO(table + 12, width: 4) == 1)
        machine.setConfig(msix + 2, width: 2, 0xC000)  // enable + function mask
        #expect(machine.config(msix + 2, width: 2) == 0xC001)
        for vector: UInt64 in 0..<2 {
            machine.writeMMIO(table + 16 * vector, width: 8, 0xFEE0_0000 | vector << 12)
            machine.writeMMIO(table + 16 * vector + 8, width: 4, 0x40 + vector)
            machine.writeMMIO(table + 16 * vector + 12, width: 4, 0)
        }
        #expect(machine.readMMIO(table + 16, width: 8) == 0xFEE0_1000)
        #expect(machine.routing.route(0)?.enabled != true)  // the function is still masked
        machine.setConfig(msix + 2, width: 2, 0x8000)
        #expect(machine.routing.route(0) == .init(address: 0xFEE0_0000, data: 0x40, enabled: true))
        #expect(machine.routing.route(1) == .init(address: 0xFEE0_1000, data: 0x41, enabled: true))

        #expect(machine.negotiate())
        machine.setBar(Common.configVector, width: 2, 1)
        #expect(machine.bar(Common.configVector, width: 2) == 1)
        machine.setBar(Common.queueSelect, width: 2, 0)
        machine.setBar(Common.queueVector, width: 2, 2)  // no such vector: NO_VECTOR reads back
        #expect(machine.bar(Common.queueVector, width: 2) == 0xFFFF)
        machine.setBar(Common.queueVector, width: 2, 0)
        #expect(machine.bar(Common.queueVector, width: 2) == 0)
        machine.setUpQueue()
        machine.addStatus(Status.driverOK)

        // Used buffers fire vector 0; no ISR bit, no INTx.
        try machine.offer()
        #expect(machine.routing.takeTriggers() == [0])
        #expect(!machine.line.isAsserted)
        #expect(machine.config(Config.status, width: 2) & 0x08 == 0)
        // Configuration changes fire vector 1.
        machine.transport.signalConfigurationChange()
        #expect(machine.routing.takeTriggers() == [1])

        // A masked vector collects a pending bit and fires when unmasked.
        machine.writeMMIO(table + 12, width: 4, 1)
        #expect(machine.routing.route(0)?.enabled == false)
        try machine.offer()
        #expect(machine.routing.takeTriggers().isEmpty)
        #expect(machine.readMMIO(pba, width: 8) == 1)
        machine.writeMMIO(pba, width: 8, 0)  // read-only
        #expect(machine.readMMIO(pba, width: 4) == 1)
        machine.writeMMIO(table + 12, width: 4, 0)
        #expect(machine.routing.takeTriggers() == [0])
        #expect(machine.readMMIO(pba, width: 8) == 0)
        // The same through the function mask.
        machine.setConfig(msix + 2, width: 2, 0xC000)
        try machine.offer()
        machine.transport.signalConfigurationChange()
        #expect(machine.routing.takeTriggers().isEmpty)
        #expect(machine.readMMIO(pba, width: 8) == 3)
        machine.setConfig(msix + 2, width: 2, 0x8000)
        #expect(machine.routing.takeTriggers() == [0, 1])
        // Unmapped events send nothing.
        machine.setBar(Common.queueVector, width: 2, 0xFFFF)
        try machine.offer()
        #expect(machine.routing.takeTriggers().isEmpty)
        #expect(machine.readMMIO(pba, width: 8) == 0)
        // Unchanged routes are not reported again.
        let updates = machine.routing.updates
        machine.setConfig(msix + 2, width: 2, 0x8000)
        machine.writeMMIO(table + 12, width: 4, 0)
        #expect(machine.routing.updates == updates)

        // Odd table accesses are refused.
        #expect(machine.readMMIO(table + 2, width: 4) == 0)
        #expect(machine.readMMIO(table + 4, width: 8) == 0)
        machine.writeMMIO(table + 1, width: 1, 0xFF)
        #expect(machine.readMMIO(table, width: 4) == 0xFEE0_0000)

        // Disabling MSI-X removes every route and brings INTx back.
        machine.setConfig(msix + 2, width: 2, 0)
        #expect(machine.routing.route(0)?.enabled == false && machine.routing.route(1)?.enabled == false)
        try machine.offer()
        #expect(machine.routing.takeTriggers().isEmpty)
        #expect(machine.line.isAsserted)
        // A device reset unmaps every event.
        machine.setBar(Common.status, width: 1, 0)
        #expect(machine.bar(Common.configVector, width: 2) == 0xFFFF)
        #expect(!machine.line.isAsserted)
    }

    @Test func configurationGenerationMovesWhenTheDriverCouldSeeAChange() throws {
        let machine = try Machine()
        machine.enable()
        let generation = machine.bar(Common.generation, width: 1)
        machine.transport.signalConfigurationChange()
        #expect(machine.isr == 2)
        // The device configuration is read after the change: the generation moves once.
        _ = machine.bar(0x1000, width: 4)
        let after = machine.bar(Common.generation, width: 1)
        #expect(after == (generation + 1) & 0xFF)
        _ = machine.bar(0x1000, width: 4)
        #expect(machine.bar(Common.generation, width: 1) == after)
    }

    @Test func configurationAccessCapabilityReachesTheBAR() throws {
        let machine = try Machine()
        // Memory space stays off: the window works without the BAR mapped.
        let window = try #require(machine.virtioCapabilities().first { $0.type == 5 }).position
        func select(offset: UInt32, length: UInt32) {
            machine.setConfig(window + 4, width: 1, 0)
            machine.setConfig(window + 8, offset)
            machine.setConfig(window + 12, length)
        }
        select(offset: UInt32(Common.numQueues), length: 2)
        #expect(machine.config(window + 16, width: 2) == 1)
        select(offset: UInt32(Common.status), length: 1)
        machine.setConfig(window + 16, width: 1, UInt32(Status.acknowledge))
        #expect(machine.config(window + 16, width: 1) == UInt32(Status.acknowledge))
        machine.enable()
        #expect(machine.status == Status.acknowledge)
        // Misaligned, oversized, out-of-BAR and other-BAR windows do nothing.
        select(offset: UInt32(Common.status) + 1, length: 2)
        machine.setConfig(window + 16, 0xFFFF)
        select(offset: 0x4000, length: 4)
        _ = machine.config(window + 16)
        select(offset: 0, length: 3)
        machine.setConfig(window + 16, 0xFF)
        machine.setConfig(window + 4, width: 1, 2)
        machine.setConfig(window + 8, UInt32(Common.status))
        machine.setConfig(window + 12, 1)
        machine.setConfig(window + 16, width: 1, 0)
        #expect(machine.status == Status.acknowledge)
    }

    @Test func concurrentAccessesNeitherDeadlockNorTrap() throws {
        let machine = try Machine()
        machine.enable()
        #expect(machine.negotiate())
        machine.setUpQueue()
        machine.addStatus(Status.driverOK)
        let msix = try #require(machine.capabilityList().last?.position)
        let rounds = 2_000
        concurrently([
            {
                // Configuration space: MSI-X on and off, Interrupt Disable, the BAR re-programmed in place.
                for round in 0..<rounds {
                    machine.setConfig(msix + 2, width: 2, round % 3 == 0 ? 0x8000 : 0)
                    let command = Config.memorySpace | (round % 5 == 0 ? Config.interruptDisable : 0)
                    machine.setConfig(Config.command, width: 2, command)
                    machine.setConfig(Config.bar0, UInt32(Machine.barBase))
                    _ = machine.config(Config.status, width: 2)
                }
            },
            {
                // BAR 0: MSI-X entries, vectors, ISR reads.
                for round in 0..<rounds {
                    machine.writeMMIO(Machine.barBase + 0x3000 + UInt64(round % 2) * 16 + 12, width: 4, UInt64(round % 2))
                    machine.setBar(Common.queueVector, width: 2, UInt64(round % 3))
                    _ = machine.isr
                }
            },
            {
                // The I/O thread's side: notifications and host events.
                for _ in 0..<rounds {
                    machine.transport.notify(queue: 0)
                    machine.transport.hostEvent(token: 0, events: .readable)
                }
            },
            {
                // A device signalling on its own, and the VMM looking at it.
                for _ in 0..<rounds {
                    machine.transport.signalConfigurationChange()
                    machine.transport.signalUsedBuffers(queue: 0)
                    _ = machine.transport.notifyAddress(queue: 0)
                    _ = machine.transport.withDevice { $0.queueCount }
                }
            },
        ])
        machine.setConfig(msix + 2, width: 2, 0)
        machine.enable()
        #expect(try machine.completesRequest())
    }

    @Test func randomTrafficNeverTraps() throws {
        let machine = try Machine()
        var random = SplitMix64(state: 0x5445_524E)
        let addresses: [UInt64] = [0, Machine.descriptors, Machine.available, Machine.used, 0x1F_FFF8, 0xFFFF_FFFF]
        let msix = try #require(machine.capabilityList().last?.position)
        for _ in 0..<10_000 {
            let width = [1, 2, 4, 4, 4, 8].randomElement(using: &random)!
            var value: UInt64 =
                switch random.next() % 4 {
                case 0: UInt64(1) << (random.next() % 8)
                case 1: addresses.randomElement(using: &random)!
                case 2: random.next() % 16
                default: random.next()
                }
            let address: UInt64
            switch random.next() % 8 {
            case 0:
                // Configuration space, BARs and command register included; the MSI-X control now and then.
                let offset = random.next() % 5 == 0 ? UInt64(msix + 2) : random.next() % 0x110
                address = Machine.ecamAddress(Machine.device, Int(offset))
            case 1:
                address = Machine.barBase + random.next() % 0x4010  // anywhere in the BAR, past its end too
            case 2:
                address = Machine.barBase + 0x3000 + random.next() % 0x20  // the MSI-X table
            default:
                address = Machine.barBase + random.next() % 0x40  // the common structure
            }
            if random.next() % 3 == 0 {
                withUnsafeMutableBytes(of: &value) {
                    _ = machine.mmio.read(address, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<width]))
                }
            } else {
                withUnsafeBytes(of: value.littleEndian) {
                    _ = machine.mmio.write(address, from: UnsafeRawBufferPointer(rebasing: $0[0..<width]))
                }
            }
            if random.next() % 64 == 0 {
                // Bring the BAR back where the accesses aim, now and then, so that most of them reach the device.
                machine.setConfig(Config.bar0, UInt32(Machine.barBase))
                machine.setConfig(Config.bar1, 0)
                machine.enable()
                machine.addStatus(UInt8(1) << (random.next() % 8))
            }
            if random.next() % 256 == 0 { try machine.offer() }
        }
        // Whatever happened, a driver that restores the BAR and resets gets a working device.
        machine.setConfig(Config.bar0, UInt32(Machine.barBase))
        machine.setConfig(Config.bar1, 0)
        machine.setConfig(msix + 2, width: 2, 0)
        machine.enable()
        #expect(machine.config(0x00) == 0x1044_1AF4)
        #expect(try machine.completesRequest())
    }
}

import GuestMemory
import TestSupport
import Testing
import Virtio
import VirtioDevices

@Suite struct BalloonTests {
    static let everything = Balloon.Options(deflateOnOOM: true, statistics: true, freePageReporting: true, queueSize: 16)

    @Test func featuresAndQueues() throws {
        let memory = try GuestMemory(size: 2 << 20)
        let plain = Balloon(memory: memory)
        #expect(plain.deviceType == .balloon)
        #expect(plain.features == VirtioFeatures(bits: [32, 29, 28, 4]))
        #expect(plain.queueCount == 2)
        let full = Balloon(memory: memory, options: Self.everything)
        #expect(full.features == VirtioFeatures(bits: [32, 29, 28, 1, 2, 4, 5]))
        #expect(full.queueCount == 4)
        #expect(full.maximumQueueSize(3) == 16 && full.maximumQueueSize(4) == 0)
        #expect(full.configurationSize == 16)
    }

    @Test func targetAndActual() throws {
        let harness = try BalloonHarness(Self.everything)
        harness.device.setTarget(bytes: 8 << 20 | 123)
        #expect(harness.device.targetBytes == 8 << 20)
        #expect(harness.interrupt.configurationChanges == 1)
        // The same target again changes nothing.
        harness.device.setTarget(bytes: 8 << 20)
        #expect(harness.interrupt.configurationChanges == 1)
        var config = [UInt8](repeating: 0xAA, count: 16)
        config.withUnsafeMutableBytes { harness.device.readConfiguration(offset: 0, into: $0) }
        #expect(config == [0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        // The driver writes actual (here in two halves) and poison_val; num_pages is the host's.
        [UInt8]([0x00, 0x04]).withUnsafeBytes { harness.device.writeConfiguration(offset: 4, bytes: $0) }
        [UInt8]([0x00, 0x00]).withUnsafeBytes { harness.device.writeConfiguration(offset: 6, bytes: $0) }
        [UInt8]([0xFF, 0xFF, 0xFF, 0xFF]).withUnsafeBytes { harness.device.writeConfiguration(offset: 0, bytes: $0) }
        [UInt8]([0xAA, 0xAA, 0xAA, 0xAA]).withUnsafeBytes { harness.device.writeConfiguration(offset: 12, bytes: $0) }
        #expect(harness.device.actualBytes == 1024 * 4096)
        #expect(harness.device.targetBytes == 8 << 20)
        var poison = [UInt8](repeating: 0, count: 4)
        poison.withUnsafeMutableBytes { harness.device.readConfiguration(offset: 12, into: $0) }
        #expect(poison == [0xAA, 0xAA, 0xAA, 0xAA])
        // More than RAM asks for all of it.
        harness.device.setTarget(bytes: 1 << 40)
        #expect(harness.device.targetBytes == 16 << 20)
        // Before activation the target is only stored.
        let idle = Balloon(memory: harness.memory)
        idle.setTarget(bytes: 4096)
        #expect(idle.targetBytes == 4096)
        // A reset forgets the driver's writes, not the host's target.
        harness.device.reset()
        #expect(harness.device.actualBytes == 0 && harness.device.targetBytes == 16 << 20)
    }

    @Test func inflateGivesPagesBackToTheHost() throws {
        var harness = try BalloonHarness(Self.everything)
        try harness.fillPages(0, count: 64)
        // The rings and the list are resident already, so that only the balloon changes what is.
        try harness.memory.zero(at: BalloonHarness.rings(0).table, length: 0x3000)
        try harness.memory.zero(at: BalloonHarness.listAddress, length: 4096)
        let before = harness.memory.residentBytes()
        // Pages 0..<32 in order (one range), 40 and 63 alone; the rest stay.
        try harness.sendFrames((0..<32).map(BalloonHarness.frame) + [BalloonHarness.frame(40), BalloonHarness.frame(63)], queue: 0)
        #expect(try harness.used(0).map(\.length) == [0])
        #expect(harness.interrupt.usedQueues == [0])
        // Measured before the checks below read the pages back in.
        #expect(harness.memory.residentBytes() + 34 * 4096 <= before)
        for page in 0..<64 {
            #expect(try harness.pageIsZero(page) == (page < 32 || page == 40 || page == 63), "page \(page)")
        }
        // Deflating is accepted and touches nothing; the pages come back zeroed when used.
        try harness.sendFrames([BalloonHarness.frame(0), BalloonHarness.frame(1)], queue: 1)
        #expect(try harness.used(1).count == 1)
        #expect(try harness.pageIsZero(0))
        try harness.memory.store(UInt8(9), at: BalloonHarness.pageBase)
        #expect(try harness.memory.load(UInt8.self, at: BalloonHarness.pageBase) == 9)
        #expect(harness.interrupt.resets == 0)
    }

    @Test func statisticsAreParsedAndRequested() throws {
        var harness = try BalloonHarness(Self.everything)
        #expect(harness.device.latestStatistics == nil)
        #expect(!harness.device.requestStatistics())
        let first = statisticsEntries([(4, 1 << 20), (5, 16 << 20), (10, 3), (42, 7), (4, 2 << 20)])
        try harness.memory.write(first, at: BalloonHarness.listAddress)
        try harness.publish(2, [ChainBuffer(address: BalloonHarness.listAddress, length: UInt32(first.count), isWrite: false)])
        var expected = BalloonStatistics()
        expected.freeMemory = 2 << 20
        expected.totalMemory = 16 << 20
        expected.oomKills = 3
        #expect(harness.device.latestStatistics == expected)
        #expect(harness.device.latestStatistics?[.totalMemory] == 16 << 20)
        // The device keeps the buffer until it wants new statistics, and (EVENT_IDX) asks to hear of the next one:
        // avail_event names it, or the driver's kick for the refilled buffer would be suppressed.
        #expect(try harness.used(2).isEmpty)
        let availableEvent: UInt16 = try harness.memory.load(
            at: BalloonHarness.rings(2).used + 4 + 8 * UInt64(BalloonHarness.queueSize))
        #expect(availableEvent == 1)
        #expect(harness.device.requestStatistics())
        #expect(try harness.used(2).map(\.length) == [0])
        #expect(harness.interrupt.usedQueues == [2])
        #expect(!harness.device.requestStatistics())
        // The driver refills and sends it back.
        let second = statisticsEntries((0..<11).map { (UInt16($0), UInt64($0) * 100) })
        try harness.memory.write(second, at: BalloonHarness.listAddress)
        try harness.publish(2, [
            ChainBuffer(address: BalloonHarness.listAddress, length: 25, isWrite: false),
            ChainBuffer(address: BalloonHarness.listAddress + 25, length: UInt32(second.count - 25), isWrite: false),
        ])
        let latest = try #require(harness.device.latestStatistics)
        for tag in BalloonStatistics.Tag.allCases { #expect(latest[tag] == UInt64(tag.rawValue) * 100) }
        #expect(harness.interrupt.resets == 0)
    }

    @Test func reportingQueueIndexFollowsTheNegotiatedFeatures() throws {
        // Without STATS_VQ, reporting_vq is queue 2.
        let withoutStatistics = Self.everything.acknowledged(without: Balloon.Feature.statisticsQueue)
        var harness = try BalloonHarness(Self.everything, acknowledged: withoutStatistics)
        try harness.fillPages(0, count: 4)
        try harness.publish(2, [ChainBuffer(address: BalloonHarness.pageBase, length: 4 * 4096, isWrite: true)])
        #expect(try harness.used(2).count == 1)
        #expect(try (0..<4).allSatisfy { try harness.pageIsZero($0) })
        // A notification for queue 3 (absent) does nothing.
        harness.device.notify(queue: 3)

        // With both, statistics are 2 and reporting 3.
        var both = try BalloonHarness(Self.everything)
        try both.fillPages(0, count: 1)
        try both.publish(3, [ChainBuffer(address: BalloonHarness.pageBase, length: 4096, isWrite: true)])
        #expect(try both.used(3).count == 1)
        #expect(try both.pageIsZero(0))

        // Negotiated but not enabled: activation fails.
        #expect(throws: VirtioDeviceError.self) { try BalloonHarness(Self.everything, queues: 3) }
        #expect(harness.interrupt.resets == 0 && both.interrupt.resets == 0)
    }

    @Test func reportedPagesAreKeptUnderNonZeroPoison() throws {
        var harness = try BalloonHarness(Self.everything)
        [UInt8]([0xAA, 0xAA, 0xAA, 0xAA]).withUnsafeBytes { harness.device.writeConfiguration(offset: 12, bytes: $0) }
        try harness.fillPages(0, count: 2)
        try harness.publish(3, [ChainBuffer(address: BalloonHarness.pageBase, length: 2 * 4096, isWrite: true)])
        #expect(try harness.used(3).count == 1)
        #expect(try !harness.pageIsZero(0) && !harness.pageIsZero(1))
    }

    enum Hostility: CaseIterable {
        case frameOutsideRAM, framePastRAM, oddListLength, writableList, partialStatisticsEntry, unalignedReport
        case reportOutsideRAM
    }

    @Test(arguments: Hostility.allCases)
    func hostileChainsNeedResetOnce(_ hostility: Hostility) throws {
        var harness = try BalloonHarness(Self.everything)
        try harness.fillPages(0, count: 1)
        let list = BalloonHarness.listAddress
        switch hostility {
        case .frameOutsideRAM:
            try harness.sendFrames([BalloonHarness.frame(0), 0xFFFF_FFFF], queue: 0)
        case .framePastRAM:
            try harness.sendFrames([UInt32((16 << 20) >> 12)], queue: 1)
        case .oddListLength:
            try harness.memory.write([1, 2, 3, 4, 5, 6], at: list)
            try harness.publish(0, [ChainBuffer(address: list, length: 6, isWrite: false)])
        case .writableList:
            try harness.publish(0, [ChainBuffer(address: list, length: 4, isWrite: false), ChainBuffer(address: list + 64, length: 4, isWrite: true)])
        case .partialStatisticsEntry:
            try harness.publish(2, [ChainBuffer(address: list, length: 15, isWrite: false)])
        case .unalignedReport:
            try harness.publish(3, [ChainBuffer(address: BalloonHarness.pageBase + 512, length: 4096, isWrite: true)])
        case .reportOutsideRAM:
            try harness.publish(3, [ChainBuffer(address: 15 << 20, length: 2 << 20, isWrite: true)])
        }
        #expect(harness.interrupt.resets == 1, "\(hostility)")
        let reason = harness.interrupt.resetReasons.first ?? ""
        #expect(reason.hasPrefix("virtio-balloon: ") && !reason.contains("\n"))
        // Nothing more is done until a reset.
        try harness.sendFrames([BalloonHarness.frame(0)], queue: 0)
        #expect(harness.interrupt.resets == 1)
        #expect(try !harness.pageIsZero(0) || hostility == .frameOutsideRAM)
        #expect(!harness.device.requestStatistics())
    }

    @Test func discardIsBoundsChecked() throws {
        let memory = try GuestMemory(size: 4 << 20)
        #expect(throws: GuestMemoryError.unaligned(address: 0x1001, length: 4096)) {
            try memory.discard(guestAddress: 0x1001, length: 4096)
        }
        #expect(throws: GuestMemoryError.unaligned(address: 0x1000, length: 100)) {
            try memory.discard(guestAddress: 0x1000, length: 100)
        }
        #expect(throws: GuestMemoryError.outOfRange(address: 4 << 20, length: 4096)) {
            try memory.discard(guestAddress: 4 << 20, length: 4096)
        }
        #expect(throws: GuestMemoryError.self) { try memory.discard(guestAddress: UInt64.max - 4095, length: 8192) }
        try memory.store(UInt64(0x1234), at: 0x2000)
        try memory.discard(guestAddress: 0x2000, length: 4096)
        #expect(try memory.load(UInt64.self, at: 0x2000) == 0)
        try memory.discard(guestAddress: 0, length: 0)
    }
}

extension Balloon.Options {
    /// Every feature these options offer, less `removed`, as a driver would acknowledge.
    func acknowledged(without removed: VirtioFeatures) -> VirtioFeatures {
        Balloon(memory: try! GuestMemory(size: 2 << 20), options: self).features.subtracting(removed)
    }
}

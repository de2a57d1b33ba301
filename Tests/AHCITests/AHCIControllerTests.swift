@testable import AHCI
import GuestMemory
import PCI
import Testing

@Suite struct AHCIControllerTests {
    typealias Register = AHCIPort.Register

    @Test func pciIdentityIsICH9AHCI() throws {
        let harness = try AHCIHarness()
        #expect(harness.controller.readConfiguration(offset: 0, width: 4) == 0x2922_8086)
        #expect(harness.controller.readConfiguration(offset: 0x08, width: 4) >> 8 == 0x01_0601)
        #expect(harness.controller.readConfiguration(offset: 0x2C, width: 4) == 0x1100_1AF4)
        #expect(harness.controller.readConfiguration(offset: 0x3D, width: 1) == 1, "INTA#")
    }

    @Test func hostRegistersAndPortSignatures() throws {
        let harness = try AHCIHarness()
        let capabilities = harness.read(0x00)
        #expect(capabilities & 0x1F == 5, "six ports")
        #expect(capabilities & (1 << 30) != 0, "NCQ")
        #expect(harness.read(0x0C) == 0x3F)
        #expect(harness.read(0x04) & (1 << 31) != 0, "AHCI mode")
        #expect(harness.port(Register.signature) == 0x101)
        #expect(harness.port(Register.sataStatus) & 0xF == 3)
        #expect(harness.read(0x100 + 0x80 + Register.sataStatus) == 0, "port 1 is empty")
        #expect(harness.read(0x100 + 0x80 + Register.signature) == 0xFFFF_FFFF)
        let cdrom = try AHCIHarness(media: .cdrom)
        #expect(cdrom.port(Register.signature) == 0xEB14_0101)
    }

    @Test func identifyDevice() throws {
        let harness = try AHCIHarness(blocks: 2048)
        harness.start()
        try harness.issue(fis: AHCIHarness.fis(ATACommand.identifyDevice), regions: [(AHCIHarness.data, 512)])
        #expect(harness.port(Register.commandIssue) == 0)
        #expect(harness.port(Register.interruptStatus) & AHCIPort.Interrupt.deviceToHost != 0)
        #expect(harness.port(Register.taskFile) == 0x50)
        #expect(try harness.transferred() == 512)
        let identify = try harness.memory.bytes(at: AHCIHarness.data, count: 512)
        #expect(identify.reduce(0, &+) == 0, "checksum")
        #expect(identify[510] == 0xA5)
        #expect(UInt64(identify[200]) | UInt64(identify[201]) << 8 == 2048, "48-bit sector count")
        #expect(Array(identify[20..<28]) == Array("ETNR21 3".utf8), "serial, byte-swapped in each word")
        let received = try harness.memory.bytes(at: AHCIHarness.receivedFIS + 0x40, count: 4)
        #expect(received == [0x34, 0x40, 0x50, 0])
    }

    @Test func readDMAExtScattersOverRegions() throws {
        let harness = try AHCIHarness()
        harness.start()
        let regions: [(UInt64, Int)] = [(AHCIHarness.data, 1000), (AHCIHarness.data + 0x10000, 24), (AHCIHarness.data + 0x20000, 4096)]
        try harness.issue(fis: AHCIHarness.fis(ATACommand.readDMAExt, lba: 3, count: 8), regions: regions)
        #expect(harness.port(Register.taskFile) == 0x50)
        #expect(try harness.transferred() == 4096)
        var read: [UInt8] = []
        read += try harness.memory.bytes(at: AHCIHarness.data, count: 1000)
        read += try harness.memory.bytes(at: AHCIHarness.data + 0x10000, count: 24)
        read += try harness.memory.bytes(at: AHCIHarness.data + 0x20000, count: 4096 - 1024)
        #expect(read == (3 * 512..<11 * 512).map(AHCIHarness.pattern))
    }

    @Test func writeDMAExtReachesTheBackend() throws {
        let harness = try AHCIHarness()
        harness.start()
        try harness.memory.write([UInt8](repeating: 0xC3, count: 1024), at: AHCIHarness.data)
        try harness.issue(fis: AHCIHarness.fis(ATACommand.writeDMAExt, lba: 10, count: 2), regions: [(AHCIHarness.data, 1024)], write: true)
        #expect(harness.port(Register.taskFile) == 0x50)
        #expect(Array(harness.file.contents[10 * 512..<12 * 512]) == [UInt8](repeating: 0xC3, count: 1024))
        #expect(harness.file.contents[12 * 512] == AHCIHarness.pattern(12 * 512))
    }

    @Test func queuedReadCompletesThroughSetDeviceBits() throws {
        let harness = try AHCIHarness()
        harness.start()
        try harness.issue(slot: 5, fis: AHCIHarness.fis(ATACommand.readFPDMAQueued, lba: 1, count: 5 << 3, features: 1),
                          regions: [(AHCIHarness.data, 512)], queued: true)
        #expect(harness.port(Register.sataActive) == 0)
        #expect(harness.port(Register.commandIssue) == 0)
        #expect(harness.port(Register.interruptStatus) & AHCIPort.Interrupt.setDeviceBits != 0)
        let setDeviceBits = try harness.memory.bytes(at: AHCIHarness.receivedFIS + 0x58, count: 8)
        #expect(setDeviceBits[0] == 0xA1)
        #expect(Array(setDeviceBits[4..<8]) == [0x20, 0, 0, 0], "tag 5 done")
        #expect(try harness.memory.bytes(at: AHCIHarness.data, count: 512) == (512..<1024).map(AHCIHarness.pattern))
    }

    @Test func interruptFollowsTheEnableBits() throws {
        let harness = try AHCIHarness()
        harness.start()
        harness.setPort(Register.interruptEnable, AHCIPort.Interrupt.deviceToHost)
        try harness.issue(fis: AHCIHarness.fis(ATACommand.flushCacheExt), regions: [])
        #expect(!harness.line.isAsserted, "GHC.IE is off")
        harness.write(0x04, 1 << 1)
        #expect(harness.line.isAsserted)
        #expect(harness.read(0x08) == 1)
        harness.setPort(Register.interruptStatus, AHCIPort.Interrupt.deviceToHost)
        harness.write(0x08, 1)
        #expect(!harness.line.isAsserted)
        #expect(harness.read(0x08) == 0)
    }

    @Test func failedCommandsStallThePortUntilItStops() throws {
        let harness = try AHCIHarness(readOnly: true)
        harness.start()
        try harness.issue(fis: AHCIHarness.fis(ATACommand.writeDMAExt, lba: 0, count: 1), regions: [(AHCIHarness.data, 512)], write: true)
        #expect(harness.port(Register.taskFile) == 0x0451, "ERR, ABRT")
        #expect(harness.port(Register.interruptStatus) & AHCIPort.Interrupt.taskFileError != 0)
        #expect(harness.port(Register.commandIssue) == 1)
        harness.setPort(Register.command, AHCIPort.Command.fisReceiveEnable)
        #expect(harness.port(Register.commandIssue) == 0)
        #expect(harness.port(Register.command) & AHCIPort.Command.listRunning == 0)
        harness.start()
        try harness.issue(fis: AHCIHarness.fis(ATACommand.readDMAExt, lba: 0, count: 1), regions: [(AHCIHarness.data, 512)])
        #expect(harness.port(Register.taskFile) == 0x50)
    }

    @Test func hbaResetStopsEveryPort() throws {
        let harness = try AHCIHarness()
        harness.start()
        harness.write(0x04, 1)
        #expect(harness.port(Register.command) == 0)
        #expect(harness.read(0x04) == 1 << 31, "reset completes at once")
    }
}

@Suite struct ATAPITests {
    typealias Register = AHCIPort.Register

    static func packet(_ harness: AHCIHarness, _ cdb: [UInt8], bytes: Int) throws {
        try harness.issue(fis: AHCIHarness.fis(ATACommand.packet, features: 1), packet: cdb, regions: [(AHCIHarness.data, max(bytes, 2))])
    }

    @Test func identifyInquiryCapacityAndRead() throws {
        let harness = try AHCIHarness(media: .cdrom, blocks: 16)
        harness.start()
        try harness.issue(fis: AHCIHarness.fis(ATACommand.identifyDevice), regions: [(AHCIHarness.data, 512)])
        #expect(harness.port(Register.taskFile) & 1 != 0, "a CD-ROM aborts IDENTIFY DEVICE")
        harness.setPort(Register.command, AHCIPort.Command.fisReceiveEnable)
        harness.start()
        try harness.issue(fis: AHCIHarness.fis(ATACommand.identifyPacketDevice), regions: [(AHCIHarness.data, 512)])
        #expect(harness.port(Register.taskFile) == 0x50)
        #expect(try harness.memory.load(UInt16.self, at: AHCIHarness.data) == 0x85C0)

        try Self.packet(harness, [0x12, 0, 0, 0, 36], bytes: 36)
        #expect(try harness.memory.bytes(at: AHCIHarness.data, count: 2) == [0x05, 0x80])
        try Self.packet(harness, [0x25], bytes: 8)
        #expect(try harness.memory.bytes(at: AHCIHarness.data, count: 8) == [0, 0, 0, 15, 0, 0, 0x08, 0])
        try Self.packet(harness, [0x28, 0, 0, 0, 0, 3, 0, 0, 2], bytes: 4096)
        #expect(harness.port(Register.taskFile) == 0x50)
        #expect(try harness.memory.bytes(at: AHCIHarness.data, count: 4096) == (3 * 2048..<5 * 2048).map(AHCIHarness.pattern))
        #expect(try harness.transferred() == 4096)
    }

    @Test func unknownOpcodeSetsSenseForRequestSense() throws {
        let harness = try AHCIHarness(media: .cdrom)
        harness.start()
        try Self.packet(harness, [0xFF], bytes: 0)
        #expect(harness.port(Register.taskFile) == 0x5451, "CHECK CONDITION: ILLEGAL REQUEST in the error register")
        harness.setPort(Register.command, AHCIPort.Command.fisReceiveEnable)
        harness.start()
        try Self.packet(harness, [0x03, 0, 0, 0, 18], bytes: 18)
        let sense = try harness.memory.bytes(at: AHCIHarness.data, count: 18)
        #expect(sense[0] == 0x70 && sense[2] == 0x05 && sense[12] == 0x20)
        try Self.packet(harness, [0x28, 0, 0, 0, 0, 63, 0, 0, 2], bytes: 4096)
        #expect(harness.port(Register.taskFile) & 1 != 0, "reading past the end fails")
    }

    @Test func writesAreRefused() throws {
        let harness = try AHCIHarness(media: .cdrom)
        harness.start()
        try harness.issue(fis: AHCIHarness.fis(ATACommand.writeDMAExt, lba: 0, count: 1), regions: [(AHCIHarness.data, 512)], write: true)
        #expect(harness.port(Register.taskFile) & 1 != 0)
        #expect(harness.file.contents[0] == AHCIHarness.pattern(0))
    }
}

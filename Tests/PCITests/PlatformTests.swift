import Devices
import PCI
import Synchronization
import TestSupport
import Testing
import VirtioPCI

@Suite struct PlatformTests {
    @Test func hostBridgeAndDeviceThroughBothMechanisms() throws {
        let machine = try Machine()
        let bridge = PCIAddress(device: 0)
        for read in [machine.config, machine.portConfig] {
            #expect(read(0x00, 4, bridge) == 0x0008_1B36)
            #expect(read(0x08, 4, bridge) >> 8 == 0x06_0000)  // host bridge class
            #expect(read(0x0E, 1, bridge) == 0)  // type 0, single function
            #expect(read(0x00, 4, Machine.device) == 0x1044_1AF4)  // virtio-rng, modern
            #expect(read(0x00, 2, Machine.device) == 0x1AF4)
            #expect(read(0x02, 2, Machine.device) == 0x1044)
            #expect(read(0x08, 1, Machine.device) == 1)  // revision 1
            #expect(read(0x2C, 4, Machine.device) == 0x1044_1AF4)  // subsystem
            #expect(read(0x0B, 1, Machine.device) == 0xFF)  // class: unassigned, as QEMU's virtio-rng
            #expect(read(Config.interruptPin, 1, Machine.device) == 1)  // INTA#
            #expect(read(0x3C, 1, Machine.device) == 17)  // Interrupt Line as the VMM set it
            #expect(read(0x3E, 2, Machine.device) == 0)
            // Absent functions and buses read as all ones, at every width.
            #expect(read(0x00, 4, PCIAddress(device: 2)) == 0xFFFF_FFFF)
            #expect(read(0x00, 2, PCIAddress(device: 31)) == 0xFFFF)
            #expect(read(0x00, 1, PCIAddress(device: 1, function: 1)) == 0xFF)
            #expect(read(0x00, 4, PCIAddress(bus: 1, device: 0)) == 0xFFFF_FFFF)
        }
        // Extended configuration space exists through the ECAM and reads as zero: no extended capabilities.
        #expect(machine.config(0x100) == 0)
        #expect(machine.config(0xFFC) == 0)
    }

    @Test func configurationPortsFollowMechanismOne() throws {
        let machine = try Machine()
        // CONFIG_ADDRESS: dword only, reserved bits read as zero.
        machine.writePort(0xCF8, width: 4, 0xFFFF_FFFF)
        #expect(machine.readPort(0xCF8, width: 4) == 0x80FF_FFFC)
        machine.writePort(0xCF8, width: 4, Machine.configAddress(Machine.device, 0))
        // Linux's type-2 probe writes bytes to 0xCF8 and 0xCFA: ordinary I/O that must not change the latch.
        machine.writePort(0xCFB, width: 1, 0x01)
        machine.writePort(0xCF8, width: 1, 0)
        #expect(machine.readPort(0xCF8, width: 1) == 0xFF)
        #expect(machine.readPort(0xCF8, width: 2) == 0xFFFF)
        #expect(machine.readPort(0xCF8, width: 4) == Machine.configAddress(Machine.device, 0))
        // Byte and word accesses at 0xCFC–0xCFF reach the bytes of the dword CONFIG_ADDRESS selects.
        #expect(machine.readPort(0xCFC, width: 4) == 0x1044_1AF4)
        #expect(machine.readPort(0xCFD, width: 1) == 0x1A)
        #expect(machine.readPort(0xCFE, width: 2) == 0x1044)
        #expect(machine.readPort(0xCFF, width: 1) == 0x10)
        // Accesses that would cross the dword, and any with the enable bit clear, read all ones.
        #expect(machine.readPort(0xCFE, width: 4) == 0xFFFF_FFFF)
        #expect(machine.readPort(0xCFF, width: 2) == 0xFFFF)
        machine.writePort(0xCF8, width: 4, Machine.configAddress(Machine.device, 0) & ~(1 << 31))
        #expect(machine.readPort(0xCFC, width: 4) == 0xFFFF_FFFF)
        machine.writePort(0xCFC + 0, width: 2, 0x0002)  // dropped: not a configuration access
        #expect(machine.portConfig(Config.command, width: 2) == 0)
        // Writes through the ports land: the Interrupt Line register, a byte at 0xCFC.
        machine.setPortConfig(0x3C, width: 1, 0x0B)
        #expect(machine.config(0x3C, width: 1) == 0x0B)
        machine.setPortConfig(Config.command, width: 2, Config.memorySpace)
        #expect(machine.config(Config.command, width: 2) == Config.memorySpace)
    }

    @Test func ecamDecodesAndRefusesOddAccesses() throws {
        let machine = try Machine()
        // Three bytes, eight bytes and dword-crossing accesses read all ones and change nothing.
        #expect(machine.readMMIO(Machine.ecamAddress(Machine.device, 0), width: 8) == .max)
        #expect(machine.readMMIO(Machine.ecamAddress(Machine.device, 2), width: 4) == 0xFFFF_FFFF)
        #expect(machine.readMMIO(Machine.ecamAddress(Machine.device, 3), width: 2) == 0xFFFF)
        machine.writeMMIO(Machine.ecamAddress(Machine.device, Config.command - 1), width: 4, 0xFFFF_FFFF)
        #expect(machine.config(Config.command, width: 2) == 0)
        // Read-only header fields ignore writes; the writable Command bits are only memory, master, INTx disable.
        machine.setConfig(0x00, 0xDEAD_BEEF)
        machine.setConfig(0x08, 0xDEAD_BEEF)
        #expect(machine.config(0x00) == 0x1044_1AF4)
        machine.setConfig(Config.command, width: 2, 0xFFFF)
        #expect(machine.config(Config.command, width: 2) == 0x0406)
        // Status is read-only: the capability list bit stays, nothing else appears.
        machine.setConfig(Config.status, width: 2, 0xFFFF)
        #expect(machine.config(Config.status, width: 2) == 0x0010)
        // No expansion ROM.
        machine.setConfig(0x30, 0xFFFF_F800)
        #expect(machine.config(0x30) == 0)
    }

    @Test func barSizingAndMoving() throws {
        let machine = try Machine()
        let size = machine.transport.barSize
        #expect(size == 0x4000)
        #expect(machine.config(Config.bar0) == 0xC000_0004)  // 64-bit, non-prefetchable memory BAR
        #expect(machine.config(Config.bar1) == 0)
        // Sizing: all ones reads back the size mask with the type bits, in both halves.
        machine.setConfig(Config.bar0, 0xFFFF_FFFF)
        machine.setConfig(Config.bar1, 0xFFFF_FFFF)
        #expect(machine.config(Config.bar0) == UInt32(truncatingIfNeeded: ~(size - 1)) | 0x4)
        #expect(machine.config(Config.bar1) == 0xFFFF_FFFF)
        for bar in 2..<6 {
            machine.setConfig(Config.bar0 + 4 * bar, 0xFFFF_FFFF)
            #expect(machine.config(Config.bar0 + 4 * bar) == 0, "BAR \(bar) is not implemented")
        }
        machine.setConfig(Config.bar0, 0xC000_0000)
        machine.setConfig(Config.bar1, 0)

        // Nothing decodes until memory space is on.
        #expect(machine.bar(Common.numQueues, width: 2) == 0xFFFF)
        #expect(machine.transport.notifyAddress(queue: 0) == nil)
        machine.enable()
        #expect(machine.bar(Common.numQueues, width: 2) == 1)
        #expect(machine.transport.notifyAddress(queue: 0) == 0xC000_2000)
        #expect(machine.transport.notifyOffset(queue: 0) == 0x2000)
        #expect(machine.transport.notifyOffset(queue: 1) == nil)

        // Moving the BAR while decoding moves the registers; the old place reads all ones.
        machine.setConfig(Config.bar0, 0xC010_0000)
        #expect(machine.readMMIO(0xC010_0000 + Common.numQueues, width: 2) == 1)
        #expect(machine.bar(Common.numQueues, width: 2) == 0xFFFF)
        #expect(machine.transport.notifyAddress(queue: 0) == 0xC010_2000)
        // A low address is rounded down to the BAR's alignment.
        machine.setConfig(Config.bar0, 0xC020_3FFF)
        #expect(machine.config(Config.bar0) == 0xC020_0004)
        // Above 4 GiB the 64-bit BAR decodes but lies outside the 32-bit window.
        machine.setConfig(Config.bar1, 1)
        #expect(machine.transport.notifyAddress(queue: 0) == 0x1_C020_2000)
        #expect(machine.readMMIO(0xC020_0000 + Common.numQueues, width: 2) == 0xFFFF)
        // Memory space off: nothing decodes.
        machine.setConfig(Config.command, width: 2, 0)
        #expect(machine.transport.notifyAddress(queue: 0) == nil)
        #expect(machine.transport.mappedBARs().isEmpty)

        // The VMM heard each change of mapping once, in order.
        let expected: [UInt64?] = [0xC000_0000, 0xC010_0000, 0xC020_0000, 0x1_C020_0000, nil]
        #expect(machine.mappings.all == expected)
    }

    @Test func accessesCrossingTheBAREndAreDropped() throws {
        let machine = try Machine()
        machine.enable()
        let end = Machine.barBase + machine.transport.barSize
        #expect(machine.readMMIO(end - 2, width: 4) == 0xFFFF_FFFF)
        #expect(machine.readMMIO(end, width: 4) == 0xFFFF_FFFF)
        // Inside the BAR but outside every structure: zero.
        #expect(machine.readMMIO(end - 4, width: 4) == 0)
    }

    @Test func configSpaceModelBasics() {
        var space = PCIConfigSpace(
            identity: PCIIdentity(
                vendorID: 0x1234, deviceID: 0x5678, revision: 2, classCode: PCIClassCode(base: 2, subclass: 0)))
        space.addBAR(2, PCIBAR(kind: .memory32, size: 0x1000, prefetchable: true))
        space.setBARAddress(2, 0xD000_0000)
        #expect(space.read(offset: 0x18, width: 4) == 0xD000_0008)
        space.write(offset: 0x18, width: 4, value: 0xFFFF_FFFF)
        #expect(space.read(offset: 0x18, width: 4) == 0xFFFF_F008)
        space.write(offset: 0x1A, width: 2, value: 0xD000)  // the upper half alone
        #expect(space.read(offset: 0x18, width: 4) == 0xD000_F008)
        #expect(space.mappedBAR(2) == nil)  // memory space off
        space.write(offset: 0x04, width: 2, value: 2)
        #expect(space.mappedBAR(2) == PCIMappedBAR(index: 2, base: 0xD000_F000, size: 0x1000))
        #expect(space.read(offset: 0x3D, width: 1) == 0)  // no interrupt pin
        #expect(space.read(offset: 0x06, width: 2) & 0x10 == 0)  // no capabilities yet
        let first = space.addCapability(id: 0x05, body: [0, 0])
        let second = space.addCapability(id: 0x09, body: [3, 1], writableMask: [0, 0xFF])
        #expect(first == 0x40 && second == 0x44)
        #expect(space.read(offset: 0x34, width: 1) == 0x40)
        #expect(space.read(offset: 0x40, width: 2) == 0x4405)
        #expect(space.read(offset: 0x44, width: 2) == 0x0009)
        #expect(space.read(offset: 0x06, width: 2) & 0x10 != 0)
        space.write(offset: 0x46, width: 2, value: 0xFFFF)
        #expect(space.read(offset: 0x46, width: 2) == 0xFF03)
        #expect(space.read(offset: 0x200, width: 4) == 0)
    }

    @Test func configurationAccessRules() {
        #expect(PCIConfigurationAccess.isValid(offset: 0xFFC, width: 4))
        #expect(PCIConfigurationAccess.isValid(offset: 0x3D, width: 2))
        #expect(!PCIConfigurationAccess.isValid(offset: 0x3E, width: 4))
        #expect(!PCIConfigurationAccess.isValid(offset: 0x1000, width: 1))
        #expect(!PCIConfigurationAccess.isValid(offset: 0, width: 3))
        #expect(!PCIConfigurationAccess.isValid(offset: -1, width: 1))
        #expect(PCIConfigurationAccess.absent(width: 1) == 0xFF)
        #expect(PCIConfigurationAccess.absent(width: 2) == 0xFFFF)
    }

    @Test func tooManyDevicesIsAnError() throws {
        let machine = try Machine()
        let devices = Array(repeating: machine.transport as any PCIDevice, count: 32)
        #expect(throws: PCIError.tooManyDevices(32)) { try PCIRoot(devices: devices) }
        #expect(PCIRoot.address(ofDevice: 0) == PCIAddress(device: 1))
        #expect("\(PCIAddress(bus: 0, device: 0x1F, function: 7))" == "00:1f.7")
    }

    @Test func interruptRoutingConvention() {
        #expect(PCIInterruptRouting.gsi(slot: 0, pin: .intA) == 16)
        #expect(PCIInterruptRouting.gsi(slot: 1, pin: .intA) == 17)
        #expect(PCIInterruptRouting.gsi(slot: 1, pin: .intD) == 20)
        #expect(PCIInterruptRouting.gsi(slot: 7, pin: .intB) == 16)
        #expect(PCIInterruptRouting.gsi(slot: 31, pin: .intD) == 18)
    }

    @Test func sharedLineIsTheOrOfItsSources() {
        let line = RecordingLine()
        let shared = SharedInterruptLine(line)
        let first = shared.makeSource()
        let second = shared.makeSource()
        first.setLevel(true)
        second.setLevel(true)
        first.setLevel(true)
        #expect(line.isAsserted && line.changes == 1)
        first.setLevel(false)
        #expect(line.isAsserted)
        second.setLevel(false)
        #expect(!line.isAsserted && line.changes == 2)
        second.setLevel(false)
        #expect(line.changes == 2)
    }
}

import ACPI
import Firmware
import Testing

@Suite struct SeaBIOSConfigurationTests {
    static func platform(bootOrder: [String] = ["/pci@i0cf8/*@1"]) throws -> FirmwarePlatform {
        FirmwarePlatform(
            memoryMap: [
                .init(address: 0, size: 0xC000_0000, type: .ram),
                .init(address: 0x1_0000_0000, size: 0x4000_0000, type: .ram),
                .init(address: 0xFFFB_C000, size: 0x4000, type: .reserved),
            ],
            vcpuCount: 3, acpi: try ACPIBuilder.build(PlatformDescription(vcpuCount: 3), at: 0), bootOrder: bootOrder,
            serialConsolePort: 0x3F8)
    }

    static func file(_ items: FirmwareConfigItems, _ name: String) throws -> [UInt8] {
        items.content(of: try #require(items.key(of: name)))
    }

    @Test func fixedItems() throws {
        let items = try FirmwareConfigItems.seaBIOS(Self.platform())
        typealias Key = FirmwareConfigItems.Key
        #expect(items.content(of: Key.ramSize).littleEndian(UInt64.self, at: 0) == 0x1_0000_0000)
        #expect(items.content(of: Key.cpuCount) == [3, 0])
        #expect(items.content(of: Key.maxCPUs) == [3, 0])
        #expect(items.content(of: Key.bootMenu) == [0, 0])
        #expect(items.content(of: Key.noGraphic) == [1, 0])
        #expect(items.content(of: Key.numa) == Array(repeating: 0, count: 8))
        #expect(items.content(of: Key.acpiTables) == [0, 0])
        #expect(items.content(of: Key.smbiosEntries) == [0, 0])
        #expect(items.content(of: Key.irq0Override) == [1, 0, 0, 0])
    }

    @Test func e820ListsEveryRange() throws {
        let e820 = try Self.file(FirmwareConfigItems.seaBIOS(Self.platform()), FirmwareConfigItems.e820File)
        #expect(e820.count == 3 * 20)
        #expect(e820.littleEndian(UInt64.self, at: 0) == 0)
        #expect(e820.littleEndian(UInt64.self, at: 8) == 0xC000_0000)
        #expect(e820.littleEndian(UInt32.self, at: 16) == 1)
        #expect(e820.littleEndian(UInt64.self, at: 20) == 0x1_0000_0000)
        #expect(e820.littleEndian(UInt64.self, at: 40) == 0xFFFB_C000)
        #expect(e820.littleEndian(UInt64.self, at: 48) == 0x4000)
        #expect(e820.littleEndian(UInt32.self, at: 56) == 2)
    }

    @Test func bootOrderAndSerialConsole() throws {
        let items = try FirmwareConfigItems.seaBIOS(Self.platform(bootOrder: ["/pci@i0cf8/*@1", "HALT"]))
        #expect(try Self.file(items, FirmwareConfigItems.bootOrderFile) == Array("/pci@i0cf8/*@1\nHALT".utf8) + [0])
        #expect(try Self.file(items, FirmwareConfigItems.serialConsoleFile) == [0xF8, 0x03])
        let withoutOrder = try FirmwareConfigItems.seaBIOS(Self.platform(bootOrder: []))
        #expect(withoutOrder.key(of: FirmwareConfigItems.bootOrderFile) == nil)
    }

    @Test func acpiFilesAreListed() throws {
        let items = try FirmwareConfigItems.seaBIOS(Self.platform())
        let names = items.files.map(\.name)
        for name in [ACPITableLoader.loaderFile, ACPITableLoader.tablesFile, ACPITableLoader.rsdpFile,
                     SMBIOSTables.anchorFile, SMBIOSTables.tablesFile] {
            #expect(names.contains(name))
        }
        #expect(try Self.file(items, ACPITableLoader.loaderFile).count % ACPITableLoader.commandLength == 0)
    }

    @Test func smbiosEntryPointAndStructures() throws {
        let smbios = SMBIOSTables(vcpuCount: 2, memoryRanges: [(0, 0xC000_0000), (0x1_0000_0000, 0x4000_0000)])
        #expect(smbios.anchor.count == SMBIOSTables.anchorLength)
        #expect(Array(smbios.anchor[0..<5]) == Array("_SM3_".utf8))
        #expect(smbios.anchor.reduce(0, &+) == 0)
        #expect(smbios.anchor.littleEndian(UInt32.self, at: 12) == UInt32(smbios.tables.count))

        var types: [UInt8] = []
        var offset = 0
        while offset < smbios.tables.count {
            let type = smbios.tables[offset]
            types.append(type)
            var end = offset + Int(smbios.tables[offset + 1])
            while !(smbios.tables[end] == 0 && smbios.tables[end + 1] == 0) { end += 1 }
            if type == 19 {
                let structure = Array(smbios.tables[offset..<end])
                #expect(structure.littleEndian(UInt32.self, at: 8) > structure.littleEndian(UInt32.self, at: 4))
            }
            if type == 16 {
                let structure = Array(smbios.tables[offset..<end])
                #expect(structure.littleEndian(UInt32.self, at: 7) == 0x40_0000, "4 GiB, in KiB")
                #expect(structure.littleEndian(UInt64.self, at: 15) == 0)
            }
            if type == 17 {
                let structure = Array(smbios.tables[offset..<end])
                #expect(structure.littleEndian(UInt16.self, at: 12) == 4096)
            }
            offset = end + 2
        }
        #expect(offset == smbios.tables.count)
        #expect(types == [1, 4, 4, 16, 17, 19, 19, 32, 127])
    }

    /// From 2 TiB the array's capacity moves to the extended field, in bytes (DSP0134 7.17).
    @Test func smbiosMemoryArrayOf2TiBUsesTheExtendedCapacityInBytes() throws {
        let total: UInt64 = 2 << 40
        let smbios = SMBIOSTables(vcpuCount: 1, memoryRanges: [(0, 0xC000_0000), (0x1_0000_0000, total - 0xC000_0000)])
        var offset = 0
        while smbios.tables[offset] != 16 {
            var end = offset + Int(smbios.tables[offset + 1])
            while !(smbios.tables[end] == 0 && smbios.tables[end + 1] == 0) { end += 1 }
            offset = end + 2
        }
        let structure = Array(smbios.tables[offset..<offset + Int(smbios.tables[offset + 1])])
        #expect(structure.littleEndian(UInt32.self, at: 7) == 0x8000_0000)
        #expect(structure.littleEndian(UInt64.self, at: 15) == total)
    }
}

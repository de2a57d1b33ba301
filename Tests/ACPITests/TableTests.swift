import ACPI
import Testing

let base: UInt64 = 0xE_0000

/// A platform with everything optional configured: a PCI host bridge and two virtio-mmio devices.
let fullPlatform = PlatformDescription(
    vcpuCount: 4,
    virtioMMIO: [
        VirtioMMIODevice(base: 0xD000_0000, size: 0x200, gsi: 16),
        VirtioMMIODevice(base: 0xD000_0200, size: 0x200, gsi: 17),
    ],
    pciHostBridge: PCIHostBridge(
        ecamBase: 0xB000_0000, busRange: 0...0xFF, mmio32: 0xC000_0000...0xCFFF_FFFF, mmio64: 0x80_0000_0000...0xFF_FFFF_FFFF)
)

/// The MADT's interrupt controller structures as (type, bytes) pairs.
private func madtEntries(_ madt: [UInt8]) -> [(type: UInt8, bytes: [UInt8])] {
    var entries: [(UInt8, [UInt8])] = []
    var offset = 44
    while offset < madt.count {
        let length = Int(madt[offset + 1])
        entries.append((madt[offset], Array(madt[offset..<offset + length])))
        offset += length
    }
    #expect(offset == madt.count)
    return entries
}

@Suite struct TableTests {
    @Test(arguments: [1, 2, 64, 255])
    func everyTableHasAValidHeaderAndChecksum(vcpuCount: Int) throws {
        var extras = fullPlatform
        extras.vcpuCount = vcpuCount
        for platform in [PlatformDescription(vcpuCount: vcpuCount), extras] {
            let set = try ACPIBuilder.build(platform, at: base)
            #expect(set.baseAddress == base && set.rsdpAddress == base)
            #expect(set.tables.first?.signature == "RSD PTR " && set.tables.first?.address == base)
            let mcfg = platform.pciHostBridge == nil ? [] : ["MCFG"]
            let expected = ["RSD PTR ", "XSDT", "FACP", "APIC"] + mcfg + ["DSDT"]
            #expect(set.tables.map(\.signature) == expected)
            let revisions: [String: UInt8] = ["XSDT": 1, "FACP": 6, "APIC": 5, "MCFG": 1, "DSDT": 2]
            for table in set.tables.dropFirst() {
                let bytes = try #require(set.bytes(of: table.signature))
                #expect(table.address % 16 == 0)
                #expect(bytes.text(at: 0, count: 4) == table.signature)
                #expect(Int(bytes.integer(UInt32.self, at: 4)) == table.length)
                #expect(bytes[bytes.startIndex + 8] == revisions[table.signature])
                #expect(bytes.byteSum == 0, "\(table.signature) checksum")
                #expect(bytes.text(at: 10, count: 6) == "TERN  ")
            }
            #expect(set.blob.count % 16 == 0)
            #expect(base + UInt64(set.blob.count) <= 0x10_0000, "tables must stay below 1 MiB")
        }
    }

    @Test func rsdpPointsAtTheXSDT() throws {
        let set = try ACPIBuilder.build(PlatformDescription(vcpuCount: 1), at: base)
        let rsdp = try #require(set.bytes(of: "RSD PTR "))
        #expect(rsdp.count == 36)
        #expect(rsdp.text(at: 0, count: 8) == "RSD PTR ")
        #expect(rsdp.prefix(20).byteSum == 0)
        #expect(rsdp.byteSum == 0)
        #expect(rsdp.text(at: 9, count: 6) == "TERN  ")
        #expect(rsdp[rsdp.startIndex + 15] == 2)
        #expect(rsdp.integer(UInt32.self, at: 16) == 0)
        #expect(rsdp.integer(UInt32.self, at: 20) == 36)
        #expect(rsdp.integer(UInt64.self, at: 24) == set.tables[1].address)
    }

    @Test func xsdtListsTheFADTMADTAndMCFG() throws {
        let plain = try ACPIBuilder.build(PlatformDescription(vcpuCount: 1), at: base)
        let xsdt = try #require(plain.bytes(of: "XSDT"))
        #expect(xsdt.count == 36 + 16)
        #expect(xsdt.integer(UInt64.self, at: 36) == plain.tables[2].address)
        #expect(xsdt.integer(UInt64.self, at: 44) == plain.tables[3].address)

        let full = try ACPIBuilder.build(fullPlatform, at: base)
        let fullXSDT = try #require(full.bytes(of: "XSDT"))
        #expect(fullXSDT.count == 36 + 24)
        #expect(fullXSDT.integer(UInt64.self, at: 52) == full.tables.first { $0.signature == "MCFG" }?.address)
    }

    @Test func fadtIsHardwareReducedAndPointsAtTheDSDT() throws {
        let set = try ACPIBuilder.build(PlatformDescription(vcpuCount: 2), at: base)
        let fadt = try #require(set.bytes(of: "FACP"))
        let dsdtAddress = try #require(set.tables.last { $0.signature == "DSDT" }).address
        #expect(fadt.count == 276)
        #expect(fadt[fadt.startIndex + 131] == 3)  // minor version: 6.3
        let flags = fadt.integer(UInt32.self, at: 112)
        #expect(flags & 1 << 20 != 0, "HW_REDUCED_ACPI")
        #expect(flags & 1 << 4 != 0, "PWR_BUTTON")
        #expect(flags & 1 << 5 != 0, "SLP_BUTTON")
        #expect(flags == 1 << 20 | 1 << 5 | 1 << 4)
        let bootArchitecture = fadt.integer(UInt16.self, at: 109)
        #expect(bootArchitecture & 1 << 2 != 0, "VGA not present")
        #expect(bootArchitecture & 1 << 3 == 0, "MSI not supported must be clear")
        #expect(bootArchitecture & 1 << 5 == 0, "CMOS RTC not present must be clear")
        #expect(bootArchitecture & 1 << 1 != 0, "8042 present")
        #expect(fadt.integer(UInt32.self, at: 40) == UInt32(dsdtAddress))
        #expect(fadt.integer(UInt64.self, at: 140) == dsdtAddress)
        #expect(fadt.integer(UInt32.self, at: 36) == 0 && fadt.integer(UInt64.self, at: 132) == 0, "no FACS")
        #expect(fadt.integer(UInt16.self, at: 46) == 0, "no SCI")
        #expect(fadt[fadt.startIndex + 108] == 0x32, "century register")
        #expect(Array(fadt.suffix(8)) == Array("TERNVMM\0".utf8))
    }

    @Test(arguments: [1, 2, 64, 255])
    func madtHasOneLocalAPICPerVCPU(vcpuCount: Int) throws {
        let set = try ACPIBuilder.build(PlatformDescription(vcpuCount: vcpuCount), at: base)
        let madt = Array(try #require(set.bytes(of: "APIC")))
        #expect(madt.count == 44 + 8 * vcpuCount + 12 + 10 + 6)
        #expect(madt.integer(UInt32.self, at: 36) == 0xFEE0_0000)
        #expect(madt.integer(UInt32.self, at: 40) == 1, "PCAT_COMPAT")
        let entries = madtEntries(madt)
        let processors = entries.filter { $0.type == 0 }
        #expect(processors.count == vcpuCount)
        for (cpu, entry) in processors.enumerated() {
            #expect(entry.bytes == [0, 8, UInt8(cpu), UInt8(cpu), 1, 0, 0, 0])
        }
        let ioAPICs = entries.filter { $0.type == 1 }
        #expect(ioAPICs.count == 1)
        #expect(ioAPICs.first?.bytes == [1, 12, UInt8(vcpuCount), 0, 0x00, 0x00, 0xC0, 0xFE, 0, 0, 0, 0])
        let overrides = entries.filter { $0.type == 2 }
        #expect(overrides.count == 1)
        #expect(overrides.first?.bytes == [2, 10, 0, 0, 2, 0, 0, 0, 0, 0])
        let nmis = entries.filter { $0.type == 4 }
        #expect(nmis.count == 1)
        #expect(nmis.first?.bytes == [4, 6, 0xFF, 0x05, 0x00, 1])
        #expect(entries.count == vcpuCount + 3)
    }

    @Test func mcfgDescribesTheECAM() throws {
        #expect(try ACPIBuilder.build(PlatformDescription(vcpuCount: 1), at: base).bytes(of: "MCFG") == nil)
        let mcfg = try #require(try ACPIBuilder.build(fullPlatform, at: base).bytes(of: "MCFG"))
        #expect(mcfg.count == 60)
        #expect(mcfg.integer(UInt64.self, at: 36) == 0)
        #expect(mcfg.integer(UInt64.self, at: 44) == 0xB000_0000)
        #expect(mcfg.integer(UInt16.self, at: 52) == 0)
        #expect(Array(mcfg)[54...55] == [0x00, 0xFF])
    }

    @Test func dsdtListsTheLegacyDevicesAndOnlyConfiguredExtras() throws {
        let plain = try #require(try ACPIBuilder.build(PlatformDescription(vcpuCount: 1), at: base).bytes(of: "DSDT"))
        #expect(Array(plain[(plain.startIndex + 36)...].prefix(1)) == [0x10], "the body is one Scope")
        #expect(plain.contains(bytes: Array("COM1".utf8)) && plain.contains(bytes: Array("PS2K".utf8)))
        #expect(plain.contains(bytes: AML.eisaID("PNP0501")) && plain.contains(bytes: AML.eisaID("PNP0303")))
        #expect(!plain.contains(bytes: Array("LNRO0005".utf8)))
        #expect(!plain.contains(bytes: Array("PCI0".utf8)))

        let full = try #require(try ACPIBuilder.build(fullPlatform, at: base).bytes(of: "DSDT"))
        #expect(full.contains(bytes: AML.string("LNRO0005")))
        #expect(full.contains(bytes: Array("V000".utf8)) && full.contains(bytes: Array("V001".utf8)))
        #expect(full.contains(bytes: ResourceDescriptor.memory32Fixed(base: 0xD000_0200, length: 0x200).bytes))
        #expect(full.contains(bytes: ResourceDescriptor.extendedInterrupt([17], trigger: .level, polarity: .activeHigh).bytes))
        #expect(full.contains(bytes: Array("PCI0".utf8)))
        #expect(full.contains(bytes: AML.eisaID("PNP0A08")) && full.contains(bytes: AML.eisaID("PNP0A03")))
        #expect(full.contains(bytes: ResourceDescriptor.qwordMemory(0x80_0000_0000...0xFF_FFFF_FFFF).bytes))
    }

    @Test func invalidPlatformsAreRejected() {
        #expect(throws: ACPIError.vcpuCount(0)) { try ACPIBuilder.build(PlatformDescription(vcpuCount: 0), at: base) }
        #expect(throws: ACPIError.vcpuCount(256)) { try ACPIBuilder.build(PlatformDescription(vcpuCount: 256), at: base) }
        #expect(throws: ACPIError.misalignedBase(base + 8)) { try ACPIBuilder.build(PlatformDescription(vcpuCount: 1), at: base + 8) }
        var wide = fullPlatform
        wide.pciHostBridge?.mmio32 = 0...UInt32.max
        #expect(throws: ACPIError.pciWindowTooLarge) { try ACPIBuilder.build(wide, at: base) }
        let many = PlatformDescription(vcpuCount: 1, virtioMMIO: Array(repeating: fullPlatform.virtioMMIO[0], count: 4097))
        #expect(throws: ACPIError.tooManyVirtioMMIODevices(4097)) { try ACPIBuilder.build(many, at: base) }
    }

    @Test func largestDefaultTableSetFitsBelowOneMiB() throws {
        let set = try ACPIBuilder.build(PlatformDescription(vcpuCount: PlatformDescription.maxVCPUs), at: base)
        #expect(set.blob.count <= 3 * 1024)
    }
}

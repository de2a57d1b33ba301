import ACPI
import Testing

/// Disassembles the tables with ACPICA's iasl, which validates lengths, checksums and AML structure, then compiles the
/// listings back and compares.
@Suite(.serialized) struct IASLTests {
    /// The tables of `platform` as files named after their signatures, disassembled; returns each file's listing.
    private func disassemble(_ platform: PlatformDescription) throws -> [String: String] {
        let probe = shell("command -v iasl")
        try #require(
            probe.status == 0,
            "iasl not found: install acpica-tools (apt-get install -y acpica-tools); CI installs it")
        let set = try ACPIBuilder.build(platform, at: 0xE_0000)
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        var listings: [String: String] = [:]
        // iasl 2020's -d takes only tables with the standard header, so the RSDP is left to TableTests.
        let files = ["XSDT": "xsdt", "FACP": "facp", "APIC": "apic", "MCFG": "mcfg", "DSDT": "dsdt"]
        for table in set.tables.dropFirst() {
            let name = try #require(files[table.signature])
            let bytes = Array(try #require(set.bytes(of: table.signature)))
            directory.write(bytes, to: name + ".dat")
            let result = shell("cd '\(directory.path)' && iasl -d \(name).dat")
            #expect(result.status == 0, "iasl -d \(name).dat failed:\n\(result.output)")
            #expect(!result.output.contains("Error"), "iasl -d \(name).dat:\n\(result.output)")
            #expect(!result.output.contains("Warning"), "iasl -d \(name).dat:\n\(result.output)")
            let dsl = try #require(directory.readBytes(name + ".dsl"), "no \(name).dsl:\n\(result.output)")
            let listing = String(decoding: dsl, as: UTF8.self)
            #expect(!listing.contains("Incorrect checksum"), "\(name).dsl:\n\(listing)")
            #expect(!listing.contains("**** "), "iasl flagged \(name).dsl:\n\(listing)")
            listings[name] = listing
            // Compiling the listing back, unoptimized, must reproduce every byte after the header (whose creator differs).
            let compiled = shell("cd '\(directory.path)' && iasl -oa -p recompiled-\(name) \(name).dsl")
            #expect(compiled.status == 0 && compiled.output.contains("0 Errors, 0 Warnings"), "\(name).dsl:\n\(compiled.output)")
            let recompiled = try #require(directory.readBytes("recompiled-\(name).aml"), "\(compiled.output)")
            #expect(recompiled.dropFirst(36) == bytes.dropFirst(36), "\(name) does not round-trip")
        }
        return listings
    }

    @Test func defaultPlatformDisassemblesCleanly() throws {
        let listings = try disassemble(PlatformDescription(vcpuCount: 1))
        #expect(Set(listings.keys) == ["xsdt", "facp", "apic", "dsdt"])
        let dsdt = try #require(listings["dsdt"])
        #expect(dsdt.contains("EisaId (\"PNP0501\")") && dsdt.contains("EisaId (\"PNP0303\")"))
        #expect(dsdt.contains("{4}") && dsdt.contains("{1}"), "COM1 and keyboard IRQs")
        #expect(!dsdt.contains("LNRO0005") && !dsdt.contains("PNP0A08"))
        let facp = try #require(listings["facp"])
        #expect(facp.contains("Hardware Reduced (V5) : 1"))
        #expect(facp.contains("Hypervisor ID : 004D4D564E524554"))  // "TERNVMM\0"
    }

    @Test func fullPlatformDisassemblesCleanly() throws {
        let listings = try disassemble(fullPlatform)
        #expect(Set(listings.keys) == ["xsdt", "facp", "apic", "mcfg", "dsdt"])
        let dsdt = try #require(listings["dsdt"])
        let expected = [
            "PNP0501", "PNP0303", "LNRO0005", "PNP0A08", "PNP0A03", "Device (V000)", "Device (V001)", "Device (PCI0)",
            "WordBusNumber", "WordIO", "DWordMemory", "QWordMemory", "Memory32Fixed",
            "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive",
        ]
        for text in expected {
            #expect(dsdt.contains(text), "\(text) missing from:\n\(dsdt)")
        }
        let apic = try #require(listings["apic"])
        #expect(apic.split(separator: "\n").filter { $0.contains("[Processor Local APIC]") }.count == 4)
        let mcfg = try #require(listings["mcfg"])
        #expect(mcfg.contains("00000000B0000000"))
    }

    @Test func ternPCIPlatformDisassemblesCleanly() throws {
        let bridge = PCIHostBridge(ecamBase: 0xE000_0000, busRange: 0...0, mmio32: 0xC000_0000...0xDFFF_FFFF)
        let listings = try disassemble(PlatformDescription(vcpuCount: 2, pciHostBridge: bridge))
        let dsdt = try #require(listings["dsdt"])
        let expected = [
            "Device (PCI0)", "EisaId (\"PNP0A08\")", "EisaId (\"PNP0A03\")", "Name (_SEG, Zero)", "Name (_BBN, Zero)",
            "0xC0000000,         // Range Minimum", "0xDFFFFFFF,         // Range Maximum",
            "0x0CF8,             // Range Minimum", "0x0CF7,             // Range Maximum",
            "Name (_PRT, Package (0x80)",
            "Device (ECAM)", "EisaId (\"PNP0C02\")", "0xE0000000,         // Address Base",
            "0x00100000,         // Address Length",
        ]
        for text in expected {
            #expect(dsdt.contains(text), "\(text) missing from:\n\(dsdt)")
        }
        #expect(!dsdt.contains("QWordMemory"), "no 64-bit window was asked for")
        // Slot 1's INTA goes to GSI 17, slot 31's INTD wraps round to GSI 18.
        let compact = dsdt.filter { !$0.isWhitespace }
        #expect(compact.contains("Package(0x04){0x0001FFFF,Zero,Zero,0x11}"))
        #expect(compact.contains("Package(0x04){0x001FFFFF,0x03,Zero,0x12}"))
        let mcfg = try #require(listings["mcfg"])
        #expect(mcfg.contains("Base Address : 00000000E0000000"))
        #expect(mcfg.contains("End Bus Number : 00"))
    }

    @Test func largestPlatformDisassemblesCleanly() throws {
        let listings = try disassemble(PlatformDescription(vcpuCount: PlatformDescription.maxVCPUs))
        #expect(listings["apic"]?.contains("Local Apic ID : FE") == true)
    }
}

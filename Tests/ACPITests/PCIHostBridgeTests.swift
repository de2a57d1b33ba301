import ACPI
import Testing

/// The PCI host bridge's DSDT devices and the platform checks that guard them.
@Suite struct PCIHostBridgeTests {
    let base: UInt64 = 0xE_0000
    let bridge = PCIHostBridge(ecamBase: 0xE000_0000, busRange: 0...0, mmio32: 0xC000_0000...0xDFFF_FFFF)

    private func dsdt(of bridge: PCIHostBridge) throws -> ArraySlice<UInt8>? {
        try ACPIBuilder.build(PlatformDescription(vcpuCount: 1, pciHostBridge: bridge), at: base).bytes(of: "DSDT")
    }

    @Test func routingTableCoversEverySlotAndPin() throws {
        let dsdt = try #require(try dsdt(of: bridge))
        #expect(dsdt.contains(bytes: AML.nameSeg("_PRT")))
        for slot: UInt64 in [0, 1, 9, 31] {
            for pin: UInt64 in 0..<4 {
                let gsi = 16 + (slot + pin) % 8
                let entry = AML.package([
                    AML.integer(slot << 16 | 0xFFFF), AML.integer(pin), AML.integer(0), AML.integer(gsi),
                ])
                #expect(dsdt.contains(bytes: entry), "slot \(slot) pin \(pin)")
            }
        }
        // The ECAM of bus 0 is a motherboard resource; there is no 64-bit window.
        #expect(dsdt.contains(bytes: AML.eisaID("PNP0C02")))
        #expect(dsdt.contains(bytes: ResourceDescriptor.memory32Fixed(base: 0xE000_0000, length: 0x10_0000).bytes))
        #expect(!dsdt.contains(bytes: [0x8A, 0x2B, 0x00]), "no QWordMemory descriptor")
    }

    @Test func routingFollowsTheConfiguredGSIs() throws {
        var wired = bridge
        wired.intxFirstGSI = 20
        wired.intxGSICount = 4
        wired.busRange = 2...3
        let dsdt = try #require(try dsdt(of: wired))
        let entry = AML.package([AML.integer(3 << 16 | 0xFFFF), AML.integer(2), AML.integer(0), AML.integer(21)])
        #expect(dsdt.contains(bytes: entry))
        // Buses 2–3 of an ECAM at 0xE000_0000 start 2 MiB in.
        #expect(dsdt.contains(bytes: ResourceDescriptor.memory32Fixed(base: 0xE020_0000, length: 0x20_0000).bytes))
    }

    @Test func unusableBridgesAreRejected() {
        var high = bridge
        high.ecamBase = 0x1_0000_0000
        #expect(throws: ACPIError.ecamAbove4GiB(0x1_0000_0000)) {
            try ACPIBuilder.build(PlatformDescription(vcpuCount: 1, pciHostBridge: high), at: base)
        }
        high.ecamBase = 0xFFF0_0000
        high.busRange = 0...1
        #expect(throws: ACPIError.ecamAbove4GiB(0xFFF0_0000)) {
            try ACPIBuilder.build(PlatformDescription(vcpuCount: 1, pciHostBridge: high), at: base)
        }
        high.ecamBase = .max
        #expect(throws: ACPIError.ecamAbove4GiB(.max)) {
            try ACPIBuilder.build(PlatformDescription(vcpuCount: 1, pciHostBridge: high), at: base)
        }
        var unwired = bridge
        unwired.intxGSICount = 0
        #expect(throws: ACPIError.noPCIInterruptGSIs) {
            try ACPIBuilder.build(PlatformDescription(vcpuCount: 1, pciHostBridge: unwired), at: base)
        }
    }
}

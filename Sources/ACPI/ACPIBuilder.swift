/// The ACPI tables of one machine, laid out contiguously for copying into guest memory.
public struct ACPITableSet: Sendable {
    /// Where one structure sits.
    public struct Table: Sendable, Equatable {
        /// The structure's signature: `RSD PTR ` for the RSDP, else the 4-character table signature.
        public let signature: String
        public let address: UInt64
        public let length: Int
    }

    /// Guest-physical address `blob` is meant for.
    public let baseAddress: UInt64
    /// Guest-physical address of the RSDP (equal to `baseAddress`).
    public let rsdpAddress: UInt64
    /// Every table, in order; the VMM copies it to `baseAddress`.
    public let blob: [UInt8]
    /// Where each structure sits: the RSDP, XSDT, FADT, MADT, MCFG (with a PCI host bridge), then the DSDT.
    public let tables: [Table]

    /// The bytes of the structure with `signature`, if present.
    public func bytes(of signature: String) -> ArraySlice<UInt8>? {
        guard let table = tables.first(where: { $0.signature == signature }) else { return nil }
        let start = Int(table.address - baseAddress)
        return blob[start..<start + table.length]
    }
}

/// Builds the ACPI tables a stock Linux kernel needs on a hardware-reduced x86 platform.
public enum ACPIBuilder {
    /// Lays out the tables of `platform` from guest-physical `base`: the RSDP first, then each table 16-byte aligned.
    ///
    /// At 0xE0000 the RSDP lies where ACPICA scans for it. The blob is 640 bytes for 1 vCPU and 2672 for 255; a PCI
    /// host bridge adds about 2.3 KiB (most of it the `_PRT`'s 128 entries) and each virtio-mmio device about 80, so
    /// it stays far below 0x100000.
    public static func build(_ platform: PlatformDescription, at base: UInt64) throws(ACPIError) -> ACPITableSet {
        guard (1...PlatformDescription.maxVCPUs).contains(platform.vcpuCount) else {
            throw .vcpuCount(platform.vcpuCount)
        }
        guard base % 16 == 0 else { throw .misalignedBase(base) }
        guard platform.virtioMMIO.count <= 0x1000 else { throw .tooManyVirtioMMIODevices(platform.virtioMMIO.count) }
        if let bridge = platform.pciHostBridge {
            if bridge.mmio32 == 0...UInt32.max || bridge.mmio64 == 0...UInt64.max { throw .pciWindowTooLarge }
            let ecam = bridge.ecamRange
            guard ecam.lowerBound < ecam.upperBound, ecam.upperBound <= 1 << 32 else { throw .ecamAbove4GiB(bridge.ecamBase) }
            guard bridge.intxGSICount > 0 else { throw .noPCIInterruptGSIs }
        }

        // Only the RSDP, XSDT and FADT hold addresses, and their lengths are fixed: lay everything out, then fill them in.
        var addressFree = [(signature: "APIC", bytes: Tables.madt(platform))]
        if let bridge = platform.pciHostBridge { addressFree.append(("MCFG", Tables.mcfg(bridge))) }
        addressFree.append(("DSDT", Tables.dsdt(platform)))
        let listed = ["FACP"] + addressFree.map(\.signature).filter { $0 != "DSDT" }  // the FADT points at the DSDT
        let lengths = [("RSD PTR ", 36), ("XSDT", Tables.headerLength + 8 * listed.count), ("FACP", Tables.fadtLength)]
            + addressFree.map { ($0.signature, $0.bytes.count) }

        var tables: [ACPITableSet.Table] = []
        var offset = 0
        for (signature, length) in lengths {
            tables.append(ACPITableSet.Table(signature: signature, address: base + UInt64(offset), length: length))
            offset = (offset + length + 15) & ~15
        }

        var blob: [UInt8] = []
        let addressed = [
            Tables.rsdp(xsdtAddress: tables[1].address),
            Tables.xsdt(tables.filter { listed.contains($0.signature) }.map(\.address)),
            Tables.fadt(dsdtAddress: tables[tables.count - 1].address),
        ]
        for bytes in addressed + addressFree.map(\.bytes) {
            blob += bytes
            blob.pad(toMultipleOf: 16)
        }
        return ACPITableSet(baseAddress: base, rsdpAddress: base, blob: blob, tables: tables)
    }
}

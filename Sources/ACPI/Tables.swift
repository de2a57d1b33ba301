/// Encoders for the individual tables (ACPI 6.3, chapter 5; PCI Firmware 3.2 for the MCFG).
enum Tables {
    /// The OEM id in the RSDP and every header.
    static let oemID = "TERN  "
    /// Length of the standard header that begins every table but the RSDP.
    static let headerLength = 36
    /// Length of a revision 6 FADT (ACPI 6.0 and later).
    static let fadtLength = 276

    /// A complete table: the standard header (with length and checksum) followed by `body`.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendASCII(signature, width: 4)
        bytes.appendLittleEndian(UInt32(headerLength + body.count))
        bytes += [revision, 0]  // checksum, fixed below
        bytes.appendASCII(oemID, width: 6)
        bytes.appendASCII("TERN" + signature, width: 8)  // OEM table id
        bytes.appendLittleEndian(UInt32(1))  // OEM revision
        bytes.appendASCII("TERN", width: 4)  // creator id
        bytes.appendLittleEndian(UInt32(1))  // creator revision
        bytes += body
        bytes.fixChecksum(at: 9, over: 0..<bytes.count)
        return bytes
    }

    /// The revision 2 Root System Description Pointer: both checksums, no RSDT (XSDT only).
    static func rsdp(xsdtAddress: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendASCII("RSD PTR ", width: 8)
        bytes.append(0)  // checksum of the first 20 bytes, fixed below
        bytes.appendASCII(oemID, width: 6)
        bytes.append(2)  // revision
        bytes.appendLittleEndian(UInt32(0))  // RSDT address
        bytes.appendLittleEndian(UInt32(36))  // length
        bytes.appendLittleEndian(xsdtAddress)
        bytes += [0, 0, 0, 0]  // extended checksum, reserved
        bytes.fixChecksum(at: 8, over: 0..<20)
        bytes.fixChecksum(at: 32, over: 0..<36)
        return bytes
    }

    /// The XSDT listing `addresses`.
    static func xsdt(_ addresses: [UInt64]) -> [UInt8] {
        var body: [UInt8] = []
        for address in addresses { body.appendLittleEndian(address) }
        return table("XSDT", revision: 1, body: body)
    }

    /// FADT flags: power and sleep buttons are control-method devices (bits 4, 5); HW_REDUCED_ACPI (bit 20).
    static let fadtFlags: UInt32 = 1 << 4 | 1 << 5 | 1 << 20
    /// IA-PC boot architecture flags: legacy ISA devices (bit 0) and an 8042 (bit 1) are present, VGA is not (bit 2).
    /// MSI is supported (bit 3 clear) and the CMOS RTC is present (bit 5 clear).
    static let iapcBootArchitecture: UInt16 = 1 << 0 | 1 << 1 | 1 << 2
    /// CMOS index of the century register, which Linux reads only when the FADT names it.
    static let centuryRegister: UInt8 = 0x32

    /// The revision 6.3 FADT of a hardware-reduced platform: no FACS, no fixed PM blocks, no SCI.
    static func fadt(dsdtAddress: UInt64) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: fadtLength - headerLength)
        func store<T: FixedWidthInteger>(_ value: T, at tableOffset: Int) {
            body.storeLittleEndian(value, at: tableOffset - headerLength)
        }
        // OSPM ignores the 32-bit DSDT field when X_DSDT is set, so 0 is fine for tables above 4 GiB.
        store(UInt32(exactly: dsdtAddress) ?? 0, at: 40)
        store(centuryRegister, at: 108)
        store(iapcBootArchitecture, at: 109)
        store(fadtFlags, at: 112)
        store(UInt8(3), at: 131)  // FADT minor version: ACPI 6.3
        store(dsdtAddress, at: 140)  // X_DSDT
        for (index, byte) in "TERNVMM\0".utf8.enumerated() { store(byte, at: 268 + index) }  // hypervisor vendor identity
        return table("FACP", revision: 6, body: body)
    }

    /// The MADT: one enabled local APIC per vCPU, the I/O APIC, IRQ 0 routed to GSI 2, and NMI on every LINT1.
    static func madt(_ platform: PlatformDescription) -> [UInt8] {
        var body: [UInt8] = []
        body.appendLittleEndian(PlatformDescription.localAPICAddress)
        body.appendLittleEndian(UInt32(1))  // PCAT_COMPAT: dual 8259s are present
        for cpu in 0..<platform.vcpuCount {
            body += [0, 8, UInt8(cpu), UInt8(cpu)]  // Processor Local APIC: UID, APIC id
            body.appendLittleEndian(UInt32(1))  // enabled
        }
        body += [1, 12, platform.ioAPICID, 0]  // I/O APIC
        body.appendLittleEndian(PlatformDescription.ioAPICAddress)
        body.appendLittleEndian(UInt32(0))  // GSI base
        body += [2, 10, 0, 0]  // Interrupt Source Override: ISA bus, IRQ 0
        body.appendLittleEndian(UInt32(2))  // GSI 2
        body.appendLittleEndian(UInt16(0))  // conforms to ISA: edge, active high
        body += [4, 6, 0xFF]  // Local APIC NMI, all processors
        body.appendLittleEndian(UInt16(0x0005))  // edge, active high
        body.append(1)  // LINT1
        return table("APIC", revision: 5, body: body)
    }

    /// The MCFG with the host bridge's ECAM on segment 0.
    static func mcfg(_ bridge: PCIHostBridge) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: 8)  // reserved
        body.appendLittleEndian(bridge.ecamBase)
        body.appendLittleEndian(UInt16(0))  // segment group
        body += [bridge.busRange.lowerBound, bridge.busRange.upperBound, 0, 0, 0, 0]
        return table("MCFG", revision: 1, body: body)
    }

    /// The DSDT: a definition block holding `\_SB_` and the devices in it.
    static func dsdt(_ platform: PlatformDescription) -> [UInt8] {
        table("DSDT", revision: 2, body: DSDT.systemBus(platform))
    }
}

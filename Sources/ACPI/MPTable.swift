/// The Intel MultiProcessor Specification 1.4 tables, for kernels booted without ACPI.
///
/// Linux scans the last KiB of base memory (0x9FC00) for the floating pointer, so the whole structure is kept within
/// 1 KiB: it lists at most `maxProcessors` (40) processors, and a machine with more vCPUs needs ACPI to use them.
public enum MPTable {
    /// The most processor entries that fit, with the fixed entries, in 1 KiB.
    public static let maxProcessors = 40
    /// Default CPU signature: family 6, model 0, stepping 0.
    public static let defaultCPUSignature: UInt32 = 0x0600
    /// Default CPUID.1:EDX feature flags: FPU (bit 0) and APIC (bit 9).
    public static let defaultFeatureFlags: UInt32 = 1 << 0 | 1 << 9

    /// The floating pointer structure at `base`, immediately followed by the configuration table.
    ///
    /// Processor entries get APIC ids 0 through `min(vcpuCount, maxProcessors) - 1`, CPU 0 marked as the bootstrap
    /// processor. ISA IRQs are wired to the I/O APIC's identity pins except IRQ 0, which goes to pin 2; IRQ 2 (the
    /// cascade) is left out, as its pin is IRQ 0's. The 8259s reach the processors as ExtINT on LINT0; NMI is LINT1.
    public static func build(
        vcpuCount: Int,
        at base: UInt64,
        cpuSignature: UInt32 = defaultCPUSignature,
        featureFlags: UInt32 = defaultFeatureFlags
    ) -> [UInt8] {
        precondition((1...PlatformDescription.maxVCPUs).contains(vcpuCount), "MP table needs 1 to 255 vCPUs")
        precondition(base % 16 == 0 && base + 0x400 <= 1 << 32, "MP table must be 16-byte aligned below 4 GiB")
        let platform = PlatformDescription(vcpuCount: vcpuCount)
        let ioAPICID = platform.ioAPICID
        var entries: [UInt8] = []
        var entryCount = 0
        func add(_ entry: [UInt8]) {
            entries += entry
            entryCount += 1
        }

        for cpu in 0..<min(vcpuCount, maxProcessors) {
            var entry: [UInt8] = [0, UInt8(cpu), 0x14, cpu == 0 ? 0x03 : 0x01]  // APIC version; enabled, bootstrap
            entry.appendLittleEndian(cpuSignature)
            entry.appendLittleEndian(featureFlags)
            entry += [UInt8](repeating: 0, count: 8)
            add(entry)
        }
        var bus: [UInt8] = [1, 0]  // bus 0
        bus.appendASCII("ISA", width: 6)
        add(bus)
        var ioAPIC: [UInt8] = [2, ioAPICID, 0x11, 0x01]  // version 0x11, enabled
        ioAPIC.appendLittleEndian(PlatformDescription.ioAPICAddress)
        add(ioAPIC)
        for irq: UInt8 in 0..<16 where irq != 2 {
            // INT, conforming polarity and trigger, from ISA bus 0 to the I/O APIC pin.
            add([3, 0, 0, 0, 0, irq, ioAPICID, irq == 0 ? 2 : irq])
        }
        add([4, 3, 0, 0, 0, 0, 0xFF, 0])  // ExtINT to LINT0 of every local APIC
        add([4, 1, 0, 0, 0, 0, 0xFF, 1])  // NMI to LINT1 of every local APIC

        var configuration: [UInt8] = []
        configuration.appendASCII("PCMP", width: 4)
        configuration.appendLittleEndian(UInt16(44 + entries.count))
        configuration += [4, 0]  // spec revision 1.4; checksum, fixed below
        configuration.appendASCII("TERN", width: 8)  // OEM id
        configuration.appendASCII("TERNVMM", width: 12)  // product id
        configuration.appendLittleEndian(UInt32(0))  // OEM table pointer
        configuration.appendLittleEndian(UInt16(0))  // OEM table size
        configuration.appendLittleEndian(UInt16(entryCount))
        configuration.appendLittleEndian(PlatformDescription.localAPICAddress)
        configuration += [0, 0, 0, 0]  // extended table length and checksum, reserved
        configuration += entries
        configuration.fixChecksum(at: 7, over: 0..<configuration.count)

        var floating: [UInt8] = []
        floating.appendASCII("_MP_", width: 4)
        floating.appendLittleEndian(UInt32(base + 16))  // configuration table address
        floating += [1, 4, 0]  // length in 16-byte units; spec revision 1.4; checksum, fixed below
        floating += [0, 0, 0, 0, 0]  // feature bytes: configuration table present, virtual wire mode (IMCRP clear)
        floating.fixChecksum(at: 10, over: 0..<16)
        return floating + configuration
    }
}

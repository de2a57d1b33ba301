/// The DSDT's namespace: the devices a guest cannot enumerate by itself.
enum DSDT {
    /// `Scope(\_SB_)` with COM1, the i8042 keyboard, the virtio-mmio devices and the PCI host bridge.
    static func systemBus(_ platform: PlatformDescription) -> [UInt8] {
        var devices = [com1, keyboard]
        for (index, device) in platform.virtioMMIO.enumerated() { devices.append(virtioMMIO(device, index: index)) }
        if let bridge = platform.pciHostBridge { devices += [pciHostBridge(bridge), ecamReservation(bridge)] }
        return AML.scope("\\_SB_", devices)
    }

    /// The first 16550 UART at 0x3F8, IRQ 4.
    static let com1 = AML.device("COM1", [
        AML.name("_HID", AML.eisaID("PNP0501")),
        AML.name("_UID", AML.integer(1)),
        AML.method("_STA", [AML.return(AML.integer(0x0F))]),
        AML.name("_CRS", AML.resourceTemplate([.io(base: 0x3F8, length: 8), .irqNoFlags([4])])),
    ])

    /// The i8042 keyboard controller at 0x60/0x64, IRQ 1.
    static let keyboard = AML.device("PS2K", [
        AML.name("_HID", AML.eisaID("PNP0303")),
        AML.name("_CRS", AML.resourceTemplate([.io(base: 0x60, length: 1), .io(base: 0x64, length: 1), .irqNoFlags([1])])),
    ])

    /// A virtio-mmio transport, matched by Linux's virtio_mmio driver through `LNRO0005`.
    static func virtioMMIO(_ device: VirtioMMIODevice, index: Int) -> [UInt8] {
        let digits = String(index, radix: 16, uppercase: true)
        return AML.device("V" + String(repeating: "0", count: 3 - digits.count) + digits, [
            AML.name("_HID", AML.string("LNRO0005")),
            AML.name("_UID", AML.integer(UInt64(index))),
            AML.name("_CCA", AML.integer(1)),
            AML.name("_CRS", AML.resourceTemplate([
                .memory32Fixed(base: device.base, length: device.size),
                .extendedInterrupt([device.gsi], trigger: .level, polarity: .activeHigh),
            ])),
        ])
    }

    /// A PCI Express root bridge: its buses, the config-mechanism ports and every other port, its MMIO windows, and
    /// the `_PRT` wiring its slots' INTx pins to GSIs.
    static func pciHostBridge(_ bridge: PCIHostBridge) -> [UInt8] {
        var resources: [ResourceDescriptor] = [
            .wordBusNumber(UInt16(bridge.busRange.lowerBound)...UInt16(bridge.busRange.upperBound)),
            .io(base: 0xCF8, length: 8),
            .wordIO(0x0000...0x0CF7),
            .wordIO(0x0D00...0xFFFF),
            .dwordMemory(bridge.mmio32),
        ]
        if let mmio64 = bridge.mmio64 { resources.append(.qwordMemory(mmio64)) }
        return AML.device("PCI0", [
            AML.name("_HID", AML.eisaID("PNP0A08")),
            AML.name("_CID", AML.eisaID("PNP0A03")),
            AML.name("_SEG", AML.integer(0)),
            AML.name("_UID", AML.integer(0)),
            AML.name("_BBN", AML.integer(UInt64(bridge.busRange.lowerBound))),
            AML.name("_CCA", AML.integer(1)),
            AML.name("_CRS", AML.resourceTemplate(resources)),
            AML.name("_PRT", interruptRouting(bridge)),
        ])
    }

    /// `_PRT` (ACPI 6.3 §6.2.13) in its GSI form: for each of the 32 slots and pins INTA–INTD (0–3), a package
    /// `{ slot << 16 | 0xFFFF, pin, 0, GSI }` with the GSI `intxFirstGSI + (slot + pin) mod intxGSICount`.
    static func interruptRouting(_ bridge: PCIHostBridge) -> [UInt8] {
        AML.package((0..<UInt32(32)).flatMap { slot in
            (0..<UInt32(4)).map { pin in
                AML.package([
                    AML.integer(UInt64(slot) << 16 | 0xFFFF),
                    AML.integer(UInt64(pin)),
                    AML.integer(0),
                    AML.integer(UInt64(bridge.intxFirstGSI + (slot + pin) % bridge.intxGSICount)),
                ])
            }
        })
    }

    /// The ECAM of the bridge's buses as a motherboard resource (`PNP0C02`), where Linux looks before trusting the
    /// MCFG (PCI Firmware 3.2 §4.1.2).
    static func ecamReservation(_ bridge: PCIHostBridge) -> [UInt8] {
        let ecam = bridge.ecamRange
        return AML.device("ECAM", [
            AML.name("_HID", AML.eisaID("PNP0C02")),
            AML.name("_CRS", AML.resourceTemplate([
                .memory32Fixed(base: UInt32(ecam.lowerBound), length: UInt32(ecam.upperBound - ecam.lowerBound)),
            ])),
        ])
    }
}

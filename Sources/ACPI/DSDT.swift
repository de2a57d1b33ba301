/// The DSDT's namespace: the devices a guest cannot enumerate by itself.
enum DSDT {
    /// `Scope(\_SB_)` with COM1, the i8042 keyboard, the virtio-mmio devices and the PCI host bridge.
    static func systemBus(_ platform: PlatformDescription) -> [UInt8] {
        var devices = [com1, keyboard]
        for (index, device) in platform.virtioMMIO.enumerated() { devices.append(virtioMMIO(device, index: index)) }
        if let bridge = platform.pciHostBridge { devices.append(pciHostBridge(bridge)) }
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

    /// A PCI Express root bridge: its buses, the config-mechanism ports and every other port, and both MMIO windows.
    static func pciHostBridge(_ bridge: PCIHostBridge) -> [UInt8] {
        AML.device("PCI0", [
            AML.name("_HID", AML.eisaID("PNP0A08")),
            AML.name("_CID", AML.eisaID("PNP0A03")),
            AML.name("_SEG", AML.integer(0)),
            AML.name("_UID", AML.integer(0)),
            AML.name("_BBN", AML.integer(UInt64(bridge.busRange.lowerBound))),
            AML.name("_CCA", AML.integer(1)),
            AML.name("_CRS", AML.resourceTemplate([
                .wordBusNumber(UInt16(bridge.busRange.lowerBound)...UInt16(bridge.busRange.upperBound)),
                .io(base: 0xCF8, length: 8),
                .wordIO(0x0000...0x0CF7),
                .wordIO(0x0D00...0xFFFF),
                .dwordMemory(bridge.mmio32),
                .qwordMemory(bridge.mmio64),
            ])),
        ])
    }
}

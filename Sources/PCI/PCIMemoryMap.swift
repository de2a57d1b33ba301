/// Where Tern's PCI platform sits in guest-physical and port space, between RAM's end at 3 GiB and the IOAPIC:
///
///     0xC000_0000–0xDFFF_FFFF   32-bit PCI MMIO window: BARs, assigned by the VMM at creation (no firmware)
///     0xE000_0000–0xE00F_FFFF   ECAM for bus 0 (the MCFG covers bus 0 only: 1 MiB)
///     0xFEB0_0000–              virtio-mmio windows (unchanged)
///     0xFEC0_0000               IOAPIC
///     0xFEE0_0000               local APICs
///     ports 0xCF8–0xCFF         configuration mechanism #1
///
/// The 4 GiB identity-mapped test guests need every BAR below 4 GiB, so there is no 64-bit window. INTx lines are
/// wired as `PCIInterruptRouting` says; MSI-X vectors get GSIs from 24 up.
public enum PCIMemoryMap {
    /// The 32-bit MMIO window the host bridge forwards to its BARs.
    public static let mmio32: ClosedRange<UInt64> = 0xC000_0000...0xDFFF_FFFF
    /// Where firmware places BARs when it assigns them (SeaBIOS packs them downward from the IOAPIC at 0xFEC00000
    /// when the host bridge is not an Intel chipset's); the host bridge forwards it too.
    public static let firmwareMMIO32: ClosedRange<UInt64> = 0xE010_0000...0xFEBF_FFFF
    /// ECAM base; bus `b` starts `b * PCIECAM.busSize` above it.
    public static let ecamBase: UInt64 = 0xE000_0000
    /// ECAM bytes: bus 0 only.
    public static let ecamSize: UInt64 = PCIECAM.busSize
}

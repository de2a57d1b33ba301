/// What the firmware tables describe: the processors and the devices a guest cannot probe on its own.
public struct PlatformDescription: Sendable, Equatable {
    /// Number of vCPUs; their local APIC ids are 0 through `vcpuCount - 1`.
    public var vcpuCount: Int
    /// virtio-mmio transports, listed in the DSDT as `V000`, `V001`, ...
    public var virtioMMIO: [VirtioMMIODevice]
    /// A PCI Express host bridge, listed in the DSDT as `PCI0` with its ECAM in the MCFG.
    public var pciHostBridge: PCIHostBridge?

    public init(vcpuCount: Int, virtioMMIO: [VirtioMMIODevice] = [], pciHostBridge: PCIHostBridge? = nil) {
        self.vcpuCount = vcpuCount
        self.virtioMMIO = virtioMMIO
        self.pciHostBridge = pciHostBridge
    }

    /// The most vCPUs the tables describe: xAPIC ids are 8 bits, and 0xFF is the broadcast id.
    public static let maxVCPUs = 255
    /// Guest-physical address of every local APIC.
    public static let localAPICAddress: UInt32 = 0xFEE0_0000
    /// Guest-physical address of the single I/O APIC, whose pins are GSIs 0 and up.
    public static let ioAPICAddress: UInt32 = 0xFEC0_0000

    /// The I/O APIC's id: the first one after the local APICs' (MP spec 1.4, 4.3.3). At 255 vCPUs that is 0xFF, the
    /// broadcast id; 64-bit Linux only needs I/O APIC ids unique among I/O APICs and accepts it.
    var ioAPICID: UInt8 { UInt8(clamping: vcpuCount) }
}

/// A virtio-mmio transport: its register window and the GSI its interrupt is wired to (level, active high).
public struct VirtioMMIODevice: Sendable, Equatable {
    public var base: UInt32
    public var size: UInt32
    public var gsi: UInt32

    public init(base: UInt32, size: UInt32, gsi: UInt32) {
        self.base = base
        self.size = size
        self.gsi = gsi
    }
}

/// A PCI Express host bridge on segment 0: its ECAM, the windows it forwards to its buses and how its slots' INTx
/// pins reach the IOAPIC.
public struct PCIHostBridge: Sendable, Equatable {
    /// Address of bus 0's configuration space, as the MCFG states it even when `busRange` starts above 0. The part
    /// `busRange` covers must lie below 4 GiB: the DSDT reserves it as a motherboard resource with a 32-bit descriptor.
    public var ecamBase: UInt64
    /// Buses decoded below the bridge; the first is its `_BBN`.
    public var busRange: ClosedRange<UInt8>
    /// The 32-bit MMIO window for BARs.
    public var mmio32: ClosedRange<UInt32>
    /// The 64-bit MMIO window for BARs, if the bridge has one.
    public var mmio64: ClosedRange<UInt64>?
    /// The first IOAPIC input of the INTx wiring: pin `p` (INTA = 0) of slot `s` drives GSI
    /// `intxFirstGSI + (s + p) mod intxGSICount`, as the `_PRT` states for all 32 slots of bus `busRange.lowerBound`.
    public var intxFirstGSI: UInt32
    /// How many consecutive IOAPIC inputs the INTx pins are spread over (at least 1).
    public var intxGSICount: UInt32

    public init(
        ecamBase: UInt64, busRange: ClosedRange<UInt8>, mmio32: ClosedRange<UInt32>, mmio64: ClosedRange<UInt64>? = nil,
        intxFirstGSI: UInt32 = 16, intxGSICount: UInt32 = 8
    ) {
        self.ecamBase = ecamBase
        self.busRange = busRange
        self.mmio32 = mmio32
        self.mmio64 = mmio64
        self.intxFirstGSI = intxFirstGSI
        self.intxGSICount = intxGSICount
    }

    /// The ECAM bytes of `busRange`: 1 MiB per bus, from `ecamBase` plus 1 MiB per bus below the first.
    /// Empty when the range would pass the end of the address space.
    var ecamRange: Range<UInt64> {
        let (start, wrapped) = ecamBase.addingReportingOverflow(UInt64(busRange.lowerBound) << 20)
        let (end, past) = start.addingReportingOverflow(UInt64(busRange.count) << 20)
        return wrapped || past ? start..<start : start..<end
    }
}

/// Why a platform cannot be described.
public enum ACPIError: Error, Equatable, CustomStringConvertible {
    /// The vCPU count is outside 1...`PlatformDescription.maxVCPUs`.
    case vcpuCount(Int)
    /// The tables must start 16-byte aligned, where the RSDP goes.
    case misalignedBase(UInt64)
    /// More virtio-mmio devices than the 4096 names `V000`...`VFFF`.
    case tooManyVirtioMMIODevices(Int)
    /// A PCI MMIO window spans its whole address space, so its size does not fit the descriptor.
    case pciWindowTooLarge
    /// The PCI host bridge's ECAM does not lie below 4 GiB.
    case ecamAbove4GiB(UInt64)
    /// The PCI host bridge spreads its INTx pins over no GSIs.
    case noPCIInterruptGSIs

    public var description: String {
        switch self {
        case .vcpuCount(let count):
            "cannot describe \(count) vCPUs: ACPI and MP tables hold 1 to \(PlatformDescription.maxVCPUs)"
        case .misalignedBase(let base):
            "ACPI tables at 0x\(String(base, radix: 16)) are not 16-byte aligned"
        case .tooManyVirtioMMIODevices(let count):
            "\(count) virtio-mmio devices exceed the 4096 the DSDT can name"
        case .pciWindowTooLarge:
            "a PCI MMIO window cannot span its whole address space"
        case .ecamAbove4GiB(let base):
            "the PCI ECAM at 0x\(String(base, radix: 16)) must lie below 4 GiB"
        case .noPCIInterruptGSIs:
            "the PCI host bridge needs at least one GSI for its INTx pins"
        }
    }
}

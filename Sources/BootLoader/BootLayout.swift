import GuestMemory

/// Where the loader puts boot data in guest-physical memory. Everything sits below 1 MiB, away from the kernel.
public enum BootLayout {
    /// The boot GDT.
    public static let gdt: UInt64 = 0x500
    /// The PVH `hvm_start_info`, its module list and its memory map.
    public static let startInfo: UInt64 = 0x6000
    public static let moduleList: UInt64 = 0x6040
    public static let memoryMap: UInt64 = 0x6100
    public static let maximumMemoryMapEntries = 128
    /// The Linux boot protocol's `boot_params` (zero page).
    public static let zeroPage: UInt64 = 0x7000
    /// The initial stack for 64-bit entries (grows down from here).
    public static let bootStack: UInt64 = 0x8FF0
    /// Identity page tables for 64-bit entries.
    public static let pageTables: UInt64 = 0x9000
    /// The kernel command line (NUL-terminated).
    public static let commandLine: UInt64 = 0x20000
    public static let commandLineCapacity = 4096
    /// Start of the BIOS/EBDA area, reserved in the memory map; firmware tables (ACPI, MP) live in it.
    public static let lowReservedStart: UInt64 = 0x9_FC00
    /// First byte of high memory; kernels load from here.
    public static let highMemory: UInt64 = 0x10_0000
}

/// A memory map entry, in the e820 / hvm_memmap_table_entry form.
public struct MemoryMapEntry: Equatable, Sendable {
    public enum Kind: UInt32, Sendable {
        case ram = 1
        case reserved = 2
        case acpiReclaimable = 3
    }

    public let address: UInt64
    public let size: UInt64
    public let kind: Kind

    public init(address: UInt64, size: UInt64, kind: Kind) {
        self.address = address
        self.size = size
        self.kind = kind
    }

    /// The memory map a guest with `memory` sees: RAM below the EBDA, the reserved BIOS area, RAM up to the
    /// MMIO hole and RAM above 4 GiB.
    public static func map(for memory: GuestMemory) -> [MemoryMapEntry] {
        var entries: [MemoryMapEntry] = []
        for region in memory.regions {
            if region.guestAddress == 0 {
                entries.append(MemoryMapEntry(address: 0, size: BootLayout.lowReservedStart, kind: .ram))
                entries.append(MemoryMapEntry(address: BootLayout.lowReservedStart,
                                              size: BootLayout.highMemory - BootLayout.lowReservedStart, kind: .reserved))
                if region.end > BootLayout.highMemory {
                    entries.append(MemoryMapEntry(address: BootLayout.highMemory, size: region.end - BootLayout.highMemory, kind: .ram))
                }
            } else {
                entries.append(MemoryMapEntry(address: region.guestAddress, size: region.size, kind: .ram))
            }
        }
        return entries
    }
}

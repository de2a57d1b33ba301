import ACPI

/// What the firmware learns about the machine through fw_cfg.
public struct FirmwarePlatform: Sendable {
    /// An e820 range type (ACPI 6.3, table 15-374).
    public enum RangeType: UInt32, Sendable {
        case ram = 1
        case reserved = 2
    }

    /// A range of the physical memory map.
    public struct Range: Sendable, Equatable {
        public var address: UInt64
        public var size: UInt64
        public var type: RangeType

        public init(address: UInt64, size: UInt64, type: RangeType) {
            self.address = address
            self.size = size
            self.type = type
        }
    }

    /// Guest RAM and the reserved ranges the firmware must keep out of its map (the firmware adds its own).
    public var memoryMap: [Range]
    public var vcpuCount: Int
    /// The ACPI tables, built at address 0 (see `ACPITableLoader`).
    public var acpi: ACPITableSet
    /// OpenFirmware device paths in boot priority order, as SeaBIOS matches them (`/pci@i0cf8/*@1` for the
    /// device in slot 1); empty leaves the firmware's own order.
    public var bootOrder: [String]
    /// The I/O port of the serial console the firmware mirrors its screen to, if any.
    public var serialConsolePort: UInt16?

    public init(memoryMap: [Range], vcpuCount: Int, acpi: ACPITableSet, bootOrder: [String] = [],
                serialConsolePort: UInt16? = nil) {
        self.memoryMap = memoryMap
        self.vcpuCount = vcpuCount
        self.acpi = acpi
        self.bootOrder = bootOrder
        self.serialConsolePort = serialConsolePort
    }

    /// Bytes of RAM in the map.
    public var ramSize: UInt64 {
        memoryMap.filter { $0.type == .ram }.reduce(0) { $0 + $1.size }
    }
}

extension FirmwareConfigItems {
    public static let e820File = "etc/e820"
    public static let bootOrderFile = "bootorder"
    public static let serialConsoleFile = "etc/sercon-port"

    /// The items SeaBIOS reads on a QEMU machine (its src/fw/paravirt.c): RAM size and the e820 map, the CPU
    /// counts, no boot menu, the boot order, the serial console, SMBIOS and the ACPI tables through the loader.
    public static func seaBIOS(_ platform: FirmwarePlatform) throws(ItemError) -> FirmwareConfigItems {
        var items = FirmwareConfigItems()
        items.set(Key.ramSize, integer: platform.ramSize)
        items.set(Key.cpuCount, integer: UInt16(clamping: platform.vcpuCount))
        items.set(Key.maxCPUs, integer: UInt16(clamping: platform.vcpuCount))
        items.set(Key.noGraphic, integer: UInt16(1))
        items.set(Key.bootMenu, integer: UInt16(0))
        items.set(Key.numa, integer: UInt64(0))
        items.set(Key.acpiTables, integer: UInt16(0))
        items.set(Key.smbiosEntries, integer: UInt16(0))
        items.set(Key.irq0Override, integer: UInt32(1))

        var e820: [UInt8] = []
        for range in platform.memoryMap {
            e820 += littleEndianBytes(range.address) + littleEndianBytes(range.size) + littleEndianBytes(range.type.rawValue)
        }
        try items.addFile(e820File, e820)
        if !platform.bootOrder.isEmpty {
            try items.addFile(bootOrderFile, Array(platform.bootOrder.joined(separator: "\n").utf8) + [0])
        }
        if let port = platform.serialConsolePort {
            try items.addFile(serialConsoleFile, littleEndianBytes(port))
        }
        let smbios = SMBIOSTables(vcpuCount: platform.vcpuCount,
                                  memoryRanges: platform.memoryMap.filter { $0.type == .ram }.map { ($0.address, $0.size) })
        try items.addFile(SMBIOSTables.anchorFile, smbios.anchor)
        try items.addFile(SMBIOSTables.tablesFile, smbios.tables)
        let loader: ACPITableLoader
        do {
            loader = try ACPITableLoader(platform.acpi)
        } catch {
            throw .invalidContent(error.description)
        }
        try items.addFile(ACPITableLoader.rsdpFile, loader.rsdp)
        try items.addFile(ACPITableLoader.tablesFile, loader.tables)
        try items.addFile(ACPITableLoader.loaderFile, loader.commands)
        return items
    }
}

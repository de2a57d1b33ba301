/// Initial vCPU register states for the boot protocols Tern supports, and the tables they refer to.
public enum BootState {
    /// Selectors of the boot GDT built by `bootGDT`: code at index 2 and data at index 3, as the Linux boot protocol asks.
    public static let codeSelector: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18
    public static let taskSelector: UInt16 = 0x20

    /// A flat 4 GiB segment.
    static func flat(selector: UInt16, type: UInt8, longMode: Bool) -> SegmentRegister {
        SegmentRegister(base: 0, limit: 0xFFFF_FFFF, selector: selector, type: type, present: true, dpl: 0,
                        db: !longMode || type & 0x8 == 0, s: true, l: longMode && type & 0x8 != 0, g: true)
    }

    /// The GDT entries (null, null, code, data, TSS) for a 32-bit (`longMode == false`) or 64-bit boot.
    public static func bootGDT(longMode: Bool) -> [UInt64] {
        let code = flat(selector: codeSelector, type: 0xB, longMode: longMode)
        let data = flat(selector: dataSelector, type: 0x3, longMode: longMode)
        let task = taskSegment
        return [0, 0, code.gdtDescriptor, data.gdtDescriptor, task.gdtDescriptor]
    }

    static var taskSegment: SegmentRegister {
        SegmentRegister(base: 0, limit: 0x67, selector: taskSelector, type: 0xB, present: true)
    }

    /// System registers for the PVH entry: 32-bit protected mode, paging off, flat segments.
    public static func pvhEntry(gdtBase: UInt64) -> SystemRegisters {
        var registers = SystemRegisters()
        let data = flat(selector: dataSelector, type: 0x3, longMode: false)
        registers.cs = flat(selector: codeSelector, type: 0xB, longMode: false)
        registers.ds = data
        registers.es = data
        registers.fs = data
        registers.gs = data
        registers.ss = data
        registers.tr = taskSegment
        registers.gdt = TableRegister(base: gdtBase, limit: UInt16(bootGDT(longMode: false).count * 8 - 1))
        registers.cr0 = ControlBits.cr0ProtectionEnable | ControlBits.cr0ExtensionType
        return registers
    }

    /// System registers for a 64-bit entry with paging on through the identity map rooted at `pml4`.
    public static func longModeEntry(gdtBase: UInt64, pml4: UInt64) -> SystemRegisters {
        var registers = SystemRegisters()
        let data = flat(selector: dataSelector, type: 0x3, longMode: true)
        registers.cs = flat(selector: codeSelector, type: 0xB, longMode: true)
        registers.ds = data
        registers.es = data
        registers.fs = data
        registers.gs = data
        registers.ss = data
        registers.tr = taskSegment
        registers.gdt = TableRegister(base: gdtBase, limit: UInt16(bootGDT(longMode: true).count * 8 - 1))
        registers.cr0 = ControlBits.cr0ProtectionEnable | ControlBits.cr0ExtensionType | ControlBits.cr0Paging
        registers.cr3 = pml4
        registers.cr4 = ControlBits.cr4PAE
        registers.efer = ControlBits.eferLongModeEnable | ControlBits.eferLongModeActive
        return registers
    }
}

/// Identity-mapping page tables built from 2 MiB pages.
public struct IdentityPageTables: Sendable {
    /// Guest-physical address of the PML4; the PDPT and page directories follow it, one 4 KiB page each.
    public let base: UInt64
    /// GiB of address space mapped from 0.
    public let gigabytes: Int

    public init(base: UInt64, gigabytes: Int) {
        precondition(base % 4096 == 0 && (1...512).contains(gigabytes), "page tables are page aligned and map 1...512 GiB")
        self.base = base
        self.gigabytes = gigabytes
    }

    /// Bytes the tables occupy.
    public var size: Int { (2 + gigabytes) * 4096 }

    /// The tables as 64-bit entries, in memory order from `base`.
    public func entries() -> [UInt64] {
        let present: UInt64 = 0x3  // present, writable
        var table = [UInt64](repeating: 0, count: size / 8)
        table[0] = (base + 0x1000) | present
        for gib in 0..<gigabytes {
            let directory = base + 0x2000 + UInt64(gib) * 0x1000
            table[512 + gib] = directory | present
            for entry in 0..<512 {
                let address = UInt64(gib) << 30 | UInt64(entry) << 21
                table[1024 + gib * 512 + entry] = address | present | 0x80  // 2 MiB page
            }
        }
        return table
    }
}

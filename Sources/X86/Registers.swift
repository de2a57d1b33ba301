/// The general-purpose registers of one x86-64 vCPU.
public struct GeneralRegisters: Equatable, Sendable {
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsi: UInt64 = 0, rdi: UInt64 = 0, rsp: UInt64 = 0, rbp: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0
    /// Bit 1 is reserved and always set.
    public var rflags: UInt64 = 0x2

    public init() {}

    /// The register with x86 encoding `number` (0 = RAX ... 7 = RDI, 8 = R8 ... 15 = R15).
    public subscript(encoding number: Int) -> UInt64 {
        get {
            switch number & 15 {
            case 0: rax
            case 1: rcx
            case 2: rdx
            case 3: rbx
            case 4: rsp
            case 5: rbp
            case 6: rsi
            case 7: rdi
            case 8: r8
            case 9: r9
            case 10: r10
            case 11: r11
            case 12: r12
            case 13: r13
            case 14: r14
            default: r15
            }
        }
        set {
            switch number & 15 {
            case 0: rax = newValue
            case 1: rcx = newValue
            case 2: rdx = newValue
            case 3: rbx = newValue
            case 4: rsp = newValue
            case 5: rbp = newValue
            case 6: rsi = newValue
            case 7: rdi = newValue
            case 8: r8 = newValue
            case 9: r9 = newValue
            case 10: r10 = newValue
            case 11: r11 = newValue
            case 12: r12 = newValue
            case 13: r13 = newValue
            case 14: r14 = newValue
            default: r15 = newValue
            }
        }
    }
}

/// A segment register in its hidden, descriptor-cache form.
public struct SegmentRegister: Equatable, Sendable {
    public var base: UInt64
    public var limit: UInt32
    public var selector: UInt16
    /// Descriptor type field (for code: 0xB execute/read accessed; for data: 0x3 read/write accessed; TSS: 0xB busy).
    public var type: UInt8
    public var present: Bool
    public var dpl: UInt8
    /// Default operation size (32-bit) for code and data segments.
    public var db: Bool
    /// Code or data (true) versus system segment (false).
    public var s: Bool
    /// 64-bit code segment.
    public var l: Bool
    /// Limit counts 4 KiB pages.
    public var g: Bool

    public init(base: UInt64 = 0, limit: UInt32 = 0, selector: UInt16 = 0, type: UInt8 = 0, present: Bool = false,
                dpl: UInt8 = 0, db: Bool = false, s: Bool = false, l: Bool = false, g: Bool = false) {
        self.base = base
        self.limit = limit
        self.selector = selector
        self.type = type
        self.present = present
        self.dpl = dpl
        self.db = db
        self.s = s
        self.l = l
        self.g = g
    }

    /// The 8-byte GDT descriptor that loads as this segment (base and limit truncated to 32 bits, as in legacy descriptors).
    public var gdtDescriptor: UInt64 {
        let limitPages = UInt64(limit)
        var value: UInt64 = limitPages & 0xFFFF
        value |= (base & 0xFF_FFFF) << 16
        value |= UInt64(type & 0xF) << 40
        value |= (s ? 1 : 0) << 44
        value |= UInt64(dpl & 3) << 45
        value |= (present ? 1 : 0) << 47
        value |= ((limitPages >> 16) & 0xF) << 48
        value |= (l ? 1 : 0) << 53
        value |= (db ? 1 : 0) << 54
        value |= (g ? 1 : 0) << 55
        value |= ((base >> 24) & 0xFF) << 56
        return value
    }
}

/// A descriptor-table register (GDTR or IDTR).
public struct TableRegister: Equatable, Sendable {
    public var base: UInt64
    public var limit: UInt16

    public init(base: UInt64 = 0, limit: UInt16 = 0) {
        self.base = base
        self.limit = limit
    }
}

/// The system registers a boot protocol sets before the first instruction.
public struct SystemRegisters: Equatable, Sendable {
    public var cs = SegmentRegister()
    public var ds = SegmentRegister()
    public var es = SegmentRegister()
    public var fs = SegmentRegister()
    public var gs = SegmentRegister()
    public var ss = SegmentRegister()
    public var tr = SegmentRegister()
    public var gdt = TableRegister()
    public var idt = TableRegister()
    public var cr0: UInt64 = 0
    public var cr3: UInt64 = 0
    public var cr4: UInt64 = 0
    public var efer: UInt64 = 0

    public init() {}
}

/// Control-register and EFER bits used when preparing boot state.
public enum ControlBits {
    public static let cr0ProtectionEnable: UInt64 = 1 << 0
    public static let cr0ExtensionType: UInt64 = 1 << 4
    public static let cr0Paging: UInt64 = 1 << 31
    public static let cr4PAE: UInt64 = 1 << 5
    public static let eferLongModeEnable: UInt64 = 1 << 8
    public static let eferLongModeActive: UInt64 = 1 << 10
}

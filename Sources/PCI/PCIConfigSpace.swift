/// The configuration space of one type-0 function (PCI Local Bus 3.0 §6.1–6.2, §6.7): the header, memory BARs
/// and a capability list in the first 256 bytes. The 3840 extended bytes a PCIe ECAM reaches read as zero: the
/// function is a conventional PCI device, so it has no extended capabilities.
///
/// Each byte has a mask of the bits the guest may write; every other bit is read-only. BAR sizing needs nothing
/// else: a BAR's mask covers only its address bits above its size, so writing all ones reads back the size mask
/// with the type bits, as PCI requires. The header's writable bits are the Command register's Memory Space, Bus
/// Master and Interrupt Disable, Cache Line Size and Interrupt Line; the Status register's error bits are never
/// set, so its write-one-to-clear semantics need no code.
public struct PCIConfigSpace: Sendable {
    /// Bytes a conventional function's configuration space holds.
    public static let size = 256
    /// Bytes an ECAM gives each function.
    public static let extendedSize = 4096
    /// Capability structures start here, after the header.
    public static let capabilitiesStart = 0x40

    /// Register offsets of the type-0 header.
    public enum Register {
        public static let vendorID = 0x00
        public static let deviceID = 0x02
        public static let command = 0x04
        public static let status = 0x06
        public static let revision = 0x08
        public static let classCode = 0x09
        public static let cacheLineSize = 0x0C
        public static let bar0 = 0x10
        public static let subsystemVendorID = 0x2C
        public static let subsystemID = 0x2E
        public static let capabilitiesPointer = 0x34
        public static let interruptLine = 0x3C
        public static let interruptPin = 0x3D
    }

    /// Status register bit: the function's INTx# is asserted.
    public static let interruptStatus: UInt16 = 1 << 3
    /// Status register bit: the capabilities pointer is valid.
    public static let capabilitiesList: UInt16 = 1 << 4

    private var bytes: [UInt8]
    private var writable: [UInt8]
    private var bars: [PCIBAR?] = Array(repeating: nil, count: 6)
    /// Offset of the last capability added, 0 before the first.
    private var lastCapability = 0
    /// Where the next capability goes.
    private var capabilityEnd = Self.capabilitiesStart

    /// A header for `identity`, with no BARs and no capabilities. `interruptPin` nil means the function has no
    /// INTx# pin; `interruptLine` is the Interrupt Line register's initial value (0xFF: unknown).
    public init(identity: PCIIdentity, interruptPin: PCIInterruptPin? = nil, interruptLine: UInt8 = 0xFF) {
        bytes = Array(repeating: 0, count: Self.size)
        writable = Array(repeating: 0, count: Self.size)
        store(UInt32(identity.vendorID), offset: Register.vendorID, width: 2)
        store(UInt32(identity.deviceID), offset: Register.deviceID, width: 2)
        bytes[Register.revision] = identity.revision
        bytes[Register.classCode] = identity.classCode.programmingInterface
        bytes[Register.classCode + 1] = identity.classCode.subclass
        bytes[Register.classCode + 2] = identity.classCode.base
        store(UInt32(identity.subsystemVendorID), offset: Register.subsystemVendorID, width: 2)
        store(UInt32(identity.subsystemID), offset: Register.subsystemID, width: 2)
        bytes[Register.interruptLine] = interruptLine
        bytes[Register.interruptPin] = interruptPin?.rawValue ?? 0
        let command = PCICommand([.memorySpace, .busMaster, .interruptDisable]).rawValue
        writable[Register.command] = UInt8(truncatingIfNeeded: command)
        writable[Register.command + 1] = UInt8(truncatingIfNeeded: command >> 8)
        writable[Register.cacheLineSize] = 0xFF
        writable[Register.interruptLine] = 0xFF
    }

    // MARK: Access

    /// The `width`-byte (1–4) little-endian value at `offset`; bytes outside the 256 read as zero.
    public func read(offset: Int, width: Int) -> UInt32 {
        var value: UInt32 = 0
        for index in 0..<min(width, 4) where (0..<Self.size).contains(offset + index) {
            value |= UInt32(bytes[offset + index]) << (8 * index)
        }
        return value
    }

    /// A guest write of the low `width` bytes (1–4) of `value` at `offset`: only writable bits change, and
    /// bytes outside the 256 are ignored.
    public mutating func write(offset: Int, width: Int, value: UInt32) {
        for index in 0..<min(width, 4) where (0..<Self.size).contains(offset + index) {
            let mask = writable[offset + index]
            let byte = UInt8(truncatingIfNeeded: value >> (8 * index))
            bytes[offset + index] = bytes[offset + index] & ~mask | byte & mask
        }
    }

    /// Sets the low `width` bytes of `value` at `offset` regardless of the write masks: the function's own update
    /// of a register it owns. `offset + width` must lie within the 256 bytes.
    public mutating func store(_ value: UInt32, offset: Int, width: Int) {
        precondition(offset >= 0 && width <= 4 && offset + width <= Self.size, "configuration store out of range")
        for index in 0..<width { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }

    /// The Command register.
    public var command: PCICommand { PCICommand(rawValue: UInt16(read(offset: Register.command, width: 2))) }

    // MARK: BARs

    /// Implements memory BAR `index` (0–5; a 64-bit BAR also takes register `index + 1`), initially at address 0.
    public mutating func addBAR(_ index: Int, _ bar: PCIBAR) {
        let registers = bar.kind == .memory64 ? 2 : 1
        precondition(index >= 0 && index + registers <= 6, "BAR \(index) does not fit the header")
        precondition((index..<index + registers).allSatisfy { bars[$0] == nil && !isUpperHalf($0) }, "BAR \(index) is taken")
        precondition(bar.size >= 16 && bar.size & (bar.size - 1) == 0, "BAR size \(bar.size) is not a power of two >= 16")
        precondition(bar.kind == .memory64 || bar.size <= 1 << 31, "a 32-bit BAR holds at most 2 GiB")
        bars[index] = bar
        let flags: UInt32 = (bar.kind == .memory64 ? 0b100 : 0) | (bar.prefetchable ? 0b1000 : 0)
        let mask = ~(bar.size - 1) & ~0xF
        let offset = Register.bar0 + 4 * index
        store(flags, offset: offset, width: 4)
        for byte in 0..<4 * registers { writable[offset + byte] = UInt8(truncatingIfNeeded: mask >> (8 * byte)) }
    }

    /// Whether BAR register `index` is the upper half of a 64-bit BAR.
    private func isUpperHalf(_ index: Int) -> Bool {
        index > 0 && bars[index - 1]?.kind == .memory64
    }

    /// The BAR implemented at `index`, if any.
    public func bar(_ index: Int) -> PCIBAR? {
        (0..<6).contains(index) ? bars[index] : nil
    }

    /// The address BAR `index` holds, whether or not memory space is enabled; nil when there is no such BAR.
    public func barAddress(_ index: Int) -> UInt64? {
        guard let bar = bar(index) else { return nil }
        let offset = Register.bar0 + 4 * index
        let low = UInt64(read(offset: offset, width: 4) & ~0xF)
        guard bar.kind == .memory64 else { return low }
        return UInt64(read(offset: offset + 4, width: 4)) << 32 | low
    }

    /// Programs BAR `index` to `address` (rounded down to the BAR's alignment), as firmware would.
    public mutating func setBARAddress(_ index: Int, _ address: UInt64) {
        guard let bar = bar(index) else { preconditionFailure("no BAR \(index)") }
        precondition(bar.kind == .memory64 || address <= UInt32.max, "a 32-bit BAR lies below 4 GiB")
        let offset = Register.bar0 + 4 * index
        write(offset: offset, width: 4, value: UInt32(truncatingIfNeeded: address))
        if bar.kind == .memory64 { write(offset: offset + 4, width: 4, value: UInt32(truncatingIfNeeded: address >> 32)) }
    }

    /// BAR `index` as the function decodes it now, or nil when it has no such BAR, memory space is disabled or
    /// the programmed range would wrap past the end of the address space.
    public func mappedBAR(_ index: Int) -> PCIMappedBAR? {
        guard command.contains(.memorySpace), let bar = bar(index), let base = barAddress(index),
            base <= UInt64.max - (bar.size - 1)
        else { return nil }
        return PCIMappedBAR(index: index, base: base, size: bar.size)
    }

    /// Every BAR the function decodes now.
    public func mappedBARs() -> [PCIMappedBAR] {
        (0..<6).compactMap { mappedBAR($0) }
    }

    // MARK: Capabilities

    /// Appends a capability with `id` whose bytes after the ID and next pointer are `body`, and links it into
    /// the list; `writableMask`, aligned with `body`, names the bits the guest may write (missing bytes are
    /// read-only). Returns the capability's offset; the capability must fit in the 256 bytes.
    @discardableResult
    public mutating func addCapability(id: UInt8, body: [UInt8], writableMask: [UInt8] = []) -> Int {
        let offset = capabilityEnd
        precondition(offset + 2 + body.count <= Self.size, "capability 0x\(String(id, radix: 16)) does not fit")
        precondition(writableMask.count <= body.count, "capability write mask is longer than its body")
        bytes[offset] = id
        for (index, byte) in body.enumerated() { bytes[offset + 2 + index] = byte }
        for (index, mask) in writableMask.enumerated() { writable[offset + 2 + index] = mask }
        if lastCapability == 0 {
            bytes[Register.capabilitiesPointer] = UInt8(offset)
            store(UInt32(Self.capabilitiesList), offset: Register.status, width: 2)
        } else {
            bytes[lastCapability + 1] = UInt8(offset)
        }
        lastCapability = offset
        capabilityEnd = (offset + 2 + body.count + 3) & ~3
        return offset
    }
}

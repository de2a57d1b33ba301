/// A small encoder for ACPI Machine Language (ACPI 6.3, chapter 20), enough to describe platform devices.
///
/// Every function returns the encoded bytes of one term; terms nest by passing those bytes on. Names and sizes come
/// from the VMM's own code, so malformed input (a bad name, an IRQ above 15) is a programmer error and traps.
public enum AML {
    /// The encoding of a 4-character name segment; shorter names are padded with `_`, as ASL does.
    public static func nameSeg(_ name: String) -> [UInt8] {
        let characters = Array(name.utf8)
        precondition((1...4).contains(characters.count), "AML name segment '\(name)' must have 1 to 4 characters")
        for (position, character) in characters.enumerated() {
            let isLead = character == UInt8(ascii: "_") || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(character)
            let isDigit = (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(character)
            precondition(isLead || (position > 0 && isDigit), "invalid character in AML name segment '\(name)'")
        }
        return characters + repeatElement(UInt8(ascii: "_"), count: 4 - characters.count)
    }

    /// The encoding of a name path such as `\_SB_.PCI0`, `^PCI0` or `COM1`: an optional root or parent prefixes,
    /// then one or more dot-separated segments.
    public static func nameString(_ path: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var rest = Substring(path)
        if rest.first == "\\" {
            bytes.append(0x5C)  // RootChar
            rest = rest.dropFirst()
        }
        while rest.first == "^" {
            bytes.append(0x5E)  // ParentPrefixChar
            rest = rest.dropFirst()
        }
        let segments = rest.isEmpty ? [] : rest.split(separator: ".", omittingEmptySubsequences: false)
        switch segments.count {
        case 0: bytes.append(0x00)  // NullName
        case 1: break
        case 2: bytes.append(0x2E)  // DualNamePrefix
        default:
            precondition(segments.count <= 255, "AML name path has too many segments")
            bytes += [0x2F, UInt8(segments.count)]  // MultiNamePrefix SegCount
        }
        for segment in segments { bytes += nameSeg(String(segment)) }
        return bytes
    }

    /// The shortest encoding of an integer constant: ZeroOp, OneOp, or a Byte/Word/DWord/QWord prefix.
    public static func integer(_ value: UInt64) -> [UInt8] {
        switch value {
        case 0: [0x00]  // ZeroOp
        case 1: [0x01]  // OneOp
        case ...0xFF: [0x0A] + littleEndianBytes(UInt8(value))
        case ...0xFFFF: [0x0B] + littleEndianBytes(UInt16(value))
        case ...0xFFFF_FFFF: [0x0C] + littleEndianBytes(UInt32(value))
        default: [0x0E] + littleEndianBytes(value)
        }
    }

    /// A string constant: StringPrefix, the ASCII bytes, then a NUL.
    public static func string(_ text: String) -> [UInt8] {
        precondition(text.utf8.allSatisfy { $0 > 0 && $0 < 0x80 }, "AML strings are ASCII without NUL")
        return [0x0D] + Array(text.utf8) + [0x00]
    }

    /// The PkgLength encoding for a package whose contents after the PkgLength are `contentLength` bytes long.
    ///
    /// The encoded length counts the PkgLength bytes themselves, so the encoding takes the fewest bytes (1 to 4) whose
    /// range holds `contentLength` plus that many.
    public static func pkgLength(contentLength: Int) -> [UInt8] {
        precondition(contentLength >= 0, "negative AML package length")
        if contentLength + 1 <= 0x3F { return [UInt8(contentLength + 1)] }
        for extraBytes in 1...3 {
            let total = contentLength + 1 + extraBytes
            guard total < 1 << (4 + 8 * extraBytes) else { continue }
            var bytes = [UInt8(extraBytes << 6) | UInt8(total & 0x0F)]
            for index in 0..<extraBytes { bytes.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * index))) }
            return bytes
        }
        preconditionFailure("AML package of \(contentLength) bytes exceeds the 28-bit PkgLength limit")
    }

    /// `Scope(path) { terms }`.
    public static func scope(_ path: String, _ terms: [[UInt8]]) -> [UInt8] {
        package(opcode: [0x10], nameString(path) + terms.joined())
    }

    /// `Device(name) { terms }`.
    public static func device(_ path: String, _ terms: [[UInt8]]) -> [UInt8] {
        package(opcode: [0x5B, 0x82], nameString(path) + terms.joined())
    }

    /// `Name(path, value)`, where `value` is an encoded data object (integer, string, buffer or package).
    public static func name(_ path: String, _ value: [UInt8]) -> [UInt8] {
        [0x08] + nameString(path) + value
    }

    /// `Method(path, argumentCount, Serialized/NotSerialized) { terms }` with sync level 0.
    public static func method(_ path: String, argumentCount: Int = 0, serialized: Bool = false, _ terms: [[UInt8]]) -> [UInt8] {
        precondition((0...7).contains(argumentCount), "AML methods take 0 to 7 arguments")
        let flags = UInt8(argumentCount) | (serialized ? 0x08 : 0)
        return package(opcode: [0x14], nameString(path) + [flags] + terms.joined())
    }

    /// `Return(value)`.
    public static func `return`(_ value: [UInt8]) -> [UInt8] {
        [0xA4] + value
    }

    /// `Buffer() { bytes }`, its size given as an integer constant.
    public static func buffer(_ bytes: [UInt8]) -> [UInt8] {
        package(opcode: [0x11], integer(UInt64(bytes.count)) + bytes)
    }

    /// `Package() { elements }` with up to 255 data-object elements.
    public static func package(_ elements: [[UInt8]]) -> [UInt8] {
        precondition(elements.count <= 255, "AML Package holds at most 255 elements")
        return package(opcode: [0x12], [UInt8(elements.count)] + elements.joined())
    }

    /// The compressed 32-bit EISA id of a 7-character id such as `PNP0501` (three letters, four hex digits), in the
    /// byte order AML stores it: `PNP0501` is 0x0105D041.
    public static func eisaIDValue(_ id: String) -> UInt32 {
        let characters = Array(id.utf8)
        precondition(characters.count == 7, "EISA id '\(id)' must have 7 characters")
        var value: UInt32 = 0
        for letter in characters[0..<3] {
            precondition((UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(letter), "EISA id '\(id)' must start with 3 letters")
            value = value << 5 | UInt32(letter - 0x40)
        }
        for digit in characters[3...] {
            guard let nibble = hexValue(digit) else { preconditionFailure("EISA id '\(id)' must end with 4 hex digits") }
            value = value << 4 | UInt32(nibble)
        }
        return value.byteSwapped
    }

    /// `EisaId(id)`: the compressed id as an integer constant.
    public static func eisaID(_ id: String) -> [UInt8] {
        integer(UInt64(eisaIDValue(id)))
    }

    /// `ResourceTemplate() { descriptors }`: a buffer of the descriptors and an end tag whose checksum byte is 0
    /// (meaning "valid without checksum").
    public static func resourceTemplate(_ descriptors: [ResourceDescriptor]) -> [UInt8] {
        buffer(descriptors.flatMap(\.bytes) + [0x79, 0x00])
    }

    private static func package(opcode: [UInt8], _ contents: [UInt8]) -> [UInt8] {
        opcode + pkgLength(contentLength: contents.count) + contents
    }

    private static func hexValue(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// One resource descriptor of a `ResourceTemplate` (ACPI 6.3, section 6.4).
///
/// The address-space descriptors describe a fixed window a bridge produces for its children: minimum and maximum
/// fixed, positive decode, granularity and translation 0 — what a PCI host bridge's `_CRS` lists.
public enum ResourceDescriptor: Sendable, Equatable {
    /// Level- or edge-triggered interrupt.
    public enum Trigger: Sendable { case level, edge }
    /// Interrupt polarity.
    public enum Polarity: Sendable { case activeHigh, activeLow }
    /// Memory caching type of an address window (`_MEM`).
    public enum Cacheability: UInt8, Sendable { case nonCacheable = 0, cacheable = 1, writeCombining = 2, prefetchable = 3 }

    /// `Memory32Fixed(ReadWrite/ReadOnly, base, length)`.
    case memory32Fixed(base: UInt32, length: UInt32, writable: Bool = true)
    /// `IO(Decode16, base, base, 1, length)`: a fixed port range.
    case io(base: UInt16, length: UInt8)
    /// `IRQNoFlags() { irqs }`: ISA IRQs 0–15, edge-triggered, active high, exclusive.
    case irqNoFlags([UInt8])
    /// `Interrupt(ResourceConsumer/ResourceProducer, trigger, polarity, Exclusive/Shared) { gsis }`.
    case extendedInterrupt([UInt32], trigger: Trigger, polarity: Polarity, shared: Bool = false, consumer: Bool = true)
    /// `WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, first, last, 0, count)`.
    case wordBusNumber(ClosedRange<UInt16>)
    /// `WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, first, last, 0, count)`.
    case wordIO(ClosedRange<UInt16>)
    /// `DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, cacheability, ReadWrite, 0, first, last, 0, size)`.
    /// The window must not span the whole 32-bit space, whose size would not fit the length field.
    case dwordMemory(ClosedRange<UInt32>, cacheability: Cacheability = .nonCacheable)
    /// `QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, cacheability, ReadWrite, 0, first, last, 0, size)`.
    case qwordMemory(ClosedRange<UInt64>, cacheability: Cacheability = .nonCacheable)

    /// The encoded descriptor.
    public var bytes: [UInt8] {
        var bytes: [UInt8] = []
        switch self {
        case .memory32Fixed(let base, let length, let writable):
            bytes = [0x86, 9, 0, writable ? 1 : 0]
            bytes.appendLittleEndian(base)
            bytes.appendLittleEndian(length)
        case .io(let base, let length):
            bytes = [0x47, 0x01]  // small item 0x08, length 7; Decode16
            bytes.appendLittleEndian(base)
            bytes.appendLittleEndian(base)
            bytes += [1, length]
        case .irqNoFlags(let irqs):
            var mask: UInt16 = 0
            for irq in irqs {
                precondition(irq < 16, "IRQNoFlags takes ISA IRQs 0 to 15")
                mask |= 1 << irq
            }
            bytes = [0x22]  // small item 0x04, length 2
            bytes.appendLittleEndian(mask)
        case .extendedInterrupt(let gsis, let trigger, let polarity, let shared, let consumer):
            precondition((1...255).contains(gsis.count), "an Interrupt descriptor lists 1 to 255 interrupts")
            var flags: UInt8 = consumer ? 0x01 : 0
            if trigger == .edge { flags |= 0x02 }
            if polarity == .activeLow { flags |= 0x04 }
            if shared { flags |= 0x08 }
            bytes = [0x89]
            bytes.appendLittleEndian(UInt16(2 + 4 * gsis.count))
            bytes += [flags, UInt8(gsis.count)]
            for gsi in gsis { bytes.appendLittleEndian(gsi) }
        case .wordBusNumber(let range):
            bytes = Self.addressSpace(item: 0x88, type: 2, typeFlags: 0, range: range)
        case .wordIO(let range):
            bytes = Self.addressSpace(item: 0x88, type: 1, typeFlags: 0x03, range: range)
        case .dwordMemory(let range, let cacheability):
            precondition(range != 0...UInt32.max, "a DWordMemory window cannot span all 4 GiB")
            bytes = Self.addressSpace(item: 0x87, type: 0, typeFlags: cacheability.rawValue << 1 | 1, range: range)
        case .qwordMemory(let range, let cacheability):
            precondition(range != 0...UInt64.max, "a QWordMemory window cannot span the whole address space")
            bytes = Self.addressSpace(item: 0x8A, type: 0, typeFlags: cacheability.rawValue << 1 | 1, range: range)
        }
        return bytes
    }

    /// A Word/DWord/QWord address space descriptor; its field width is `T`'s.
    private static func addressSpace<T: FixedWidthInteger & UnsignedInteger>(
        item: UInt8, type: UInt8, typeFlags: UInt8, range: ClosedRange<T>
    ) -> [UInt8] {
        var bytes = [item]
        bytes.appendLittleEndian(UInt16(3 + 5 * MemoryLayout<T>.size))
        bytes += [type, 0x0C, typeFlags]  // general flags: MinFixed | MaxFixed, PosDecode, producer
        bytes.appendLittleEndian(T(0))  // granularity
        bytes.appendLittleEndian(range.lowerBound)
        bytes.appendLittleEndian(range.upperBound)
        bytes.appendLittleEndian(T(0))  // translation offset
        bytes.appendLittleEndian(range.upperBound - range.lowerBound + 1)
        return bytes
    }
}

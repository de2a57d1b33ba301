/// The Linux x86 boot protocol's setup header, read from a bzImage (Documentation/arch/x86/boot.rst).
public struct SetupHeader: Equatable, Sendable {
    /// The header lives at this file offset and is copied to the same offset of the zero page.
    public static let offset = 0x1F1
    /// "HdrS" at 0x202.
    public static let magic: UInt32 = 0x5372_6448
    /// Oldest protocol with the 64-bit entry and `xloadflags` (2.12).
    public static let minimumVersion: UInt16 = 0x020C
    static let kernel64Flag: UInt16 = 1 << 0

    public let setupSectors: Int
    public let version: UInt16
    public let loadFlags: UInt8
    public let xloadFlags: UInt16
    public let initrdAddressMax: UInt32
    public let kernelAlignment: UInt32
    public let relocatable: Bool
    /// Longest command line the kernel accepts, excluding the terminating NUL.
    public let commandLineSize: UInt32
    /// Where the compressed payload starts, relative to the protected-mode code, and its length.
    public let payloadOffset: UInt32
    public let payloadLength: UInt32
    public let preferredAddress: UInt64
    /// Memory the kernel needs from its load address while it decompresses and runs.
    public let initSize: UInt32
    /// One past the last header byte (0x202 plus the byte at 0x201).
    public let end: Int

    /// Whether `bytes` starts like a bzImage (the "HdrS" signature in place).
    public static func matches(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 0x208 && bytes.le32(0x202) == magic  // the signature and the version after it
    }

    /// Parses and checks the header of a whole bzImage file.
    public init(parsing bytes: UnsafeRawBufferPointer) throws(ImageFormatError) {
        guard Self.matches(bytes) else { throw .badMagic }
        version = bytes.le16(0x206)
        guard version >= Self.minimumVersion else { throw .bootProtocolTooOld(version: version) }
        guard bytes.count >= 0x268 else { throw .bzImageTruncated }
        let sectors = Int(bytes[0x1F1])
        setupSectors = sectors == 0 ? 4 : sectors
        loadFlags = bytes[0x211]
        initrdAddressMax = bytes.le32(0x22C)
        kernelAlignment = bytes.le32(0x230)
        relocatable = bytes[0x234] != 0
        xloadFlags = bytes.le16(0x236)
        commandLineSize = bytes.le32(0x238)
        payloadOffset = bytes.le32(0x248)
        payloadLength = bytes.le32(0x24C)
        preferredAddress = bytes.le64(0x258)
        initSize = bytes.le32(0x260)
        end = 0x202 + Int(bytes[0x201])
        guard xloadFlags & Self.kernel64Flag != 0 else { throw .no64BitEntry }
        guard end <= bytes.count, end <= 0x290 else { throw .bzImageTruncated }
        guard protectedModeOffset < bytes.count else { throw .bzImageTruncated }
        guard UInt64(payloadOffset) + UInt64(payloadLength) <= UInt64(bytes.count - protectedModeOffset) else {
            throw .bzImageTruncated
        }
    }

    /// The kernel release a bzImage names in its setup code (the first word of its version string, e.g.
    /// "6.1.0-9-amd64"), or nil when the file has none.
    public static func kernelRelease(_ bytes: UnsafeRawBufferPointer) -> String? {
        guard matches(bytes), bytes.count >= 0x210 else { return nil }
        let pointer = Int(bytes.le16(0x20E))
        guard pointer != 0 else { return nil }
        let start = 0x200 + pointer
        guard start < bytes.count else { return nil }
        var end = start
        while end < bytes.count && end - start < 256 && bytes[end] != 0 && bytes[end] != 0x20 { end += 1 }
        guard end > start else { return nil }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self)
    }

    /// File offset of the protected-mode kernel (after the real-mode setup sectors).
    public var protectedModeOffset: Int { (setupSectors + 1) * 512 }
}

/// Offsets of the `boot_params` fields the loader fills in (the "zero page").
enum ZeroPage {
    static let size = 4096
    static let acpiRSDPAddress = 0x070
    static let e820Entries = 0x1E8
    static let typeOfLoader = 0x210
    static let loadFlags = 0x211
    static let ramdiskImage = 0x218
    static let ramdiskSize = 0x21C
    static let heapEndPointer = 0x224
    static let commandLinePointer = 0x228
    static let videoMode = 0x1FA
    static let e820Table = 0x2D0
    static let e820Capacity = 128

    static let loadedHigh: UInt8 = 0x01
    static let canUseHeap: UInt8 = 0x80
    /// The loader ID for "undefined boot loader".
    static let undefinedLoader: UInt8 = 0xFF
}

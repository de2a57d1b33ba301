/// Why a kernel image was refused.
public enum ImageFormatError: Error, Equatable, CustomStringConvertible {
    case tooSmall(Int)
    case badMagic
    case notELF64
    case notLittleEndian
    case notX86_64(machine: UInt16)
    case notExecutable(type: UInt16)
    case badProgramHeaders(String)
    case segmentTruncated(index: Int)
    case segmentSizes(index: Int)
    case noLoadableSegments
    case noEntryPoint
    case malformedNote(String)
    case bootProtocolTooOld(version: UInt16)
    case no64BitEntry
    case bzImageTruncated

    public var description: String {
        switch self {
        case .tooSmall(let size): return "only \(size) bytes, too small to be a kernel image"
        case .badMagic: return "neither an ELF64 image nor a bzImage; Tern boots ELF vmlinux (PVH or 64-bit entry) and bzImage kernels"
        case .notELF64: return "32-bit ELF; Tern boots 64-bit (ELFCLASS64) images"
        case .notLittleEndian: return "big-endian ELF; x86-64 images are little-endian"
        case .notX86_64(let machine): return "ELF machine \(machine) is not x86-64 (62)"
        case .notExecutable(let type): return "ELF type \(type) is not an executable (ET_EXEC or ET_DYN)"
        case .badProgramHeaders(let reason): return "bad program headers: \(reason)"
        case .segmentTruncated(let index): return "segment \(index) extends past the end of the file (truncated image?)"
        case .segmentSizes(let index): return "segment \(index) has a file size larger than its memory size"
        case .noLoadableSegments: return "no loadable (PT_LOAD) segments"
        case .noEntryPoint: return "no usable entry point (e_entry is 0 and there is no PVH note)"
        case .malformedNote(let reason): return "malformed ELF note: \(reason)"
        case .bootProtocolTooOld(let version):
            return "bzImage boot protocol \(version >> 8).\(String(version & 0xFF, radix: 16)) is older than 2.12, which the 64-bit entry needs; use a newer kernel"
        case .no64BitEntry: return "bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear); Tern boots 64-bit kernels"
        case .bzImageTruncated: return "bzImage is truncated: its setup header points past the end of the file"
        }
    }
}

/// A loadable piece of an ELF image.
public struct LoadSegment: Equatable, Sendable {
    public let fileOffset: UInt64
    public let fileSize: UInt64
    public let physicalAddress: UInt64
    public let memorySize: UInt64

    public init(fileOffset: UInt64, fileSize: UInt64, physicalAddress: UInt64, memorySize: UInt64) {
        self.fileOffset = fileOffset
        self.fileSize = fileSize
        self.physicalAddress = physicalAddress
        self.memorySize = memorySize
    }
}

/// The parts of an ELF64 x86-64 image a loader needs. Parsing validates every offset and size against the file.
public struct ELFImage: Equatable, Sendable {
    /// The ELF note that carries the 32-bit PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY).
    public static let pvhNoteType: UInt32 = 18
    static let maximumProgramHeaders = 256

    public let entry: UInt64
    public let segments: [LoadSegment]
    /// The 32-bit physical PVH entry point, when the image has one.
    public let pvhEntry: UInt64?

    /// Parses `bytes`, the whole image file.
    public init(parsing bytes: UnsafeRawBufferPointer) throws(ImageFormatError) {
        guard bytes.count >= 64 else { throw .tooSmall(bytes.count) }
        guard bytes[0] == 0x7F, bytes[1] == 0x45, bytes[2] == 0x4C, bytes[3] == 0x46 else { throw .badMagic }
        guard bytes[4] == 2 else { throw .notELF64 }
        guard bytes[5] == 1 else { throw .notLittleEndian }
        let type = bytes.le16(16)
        let machine = bytes.le16(18)
        guard machine == 62 else { throw .notX86_64(machine: machine) }
        guard type == 2 || type == 3 else { throw .notExecutable(type: type) }
        entry = bytes.le64(24)
        let headerOffset = bytes.le64(32)
        let headerSize = Int(bytes.le16(54))
        let headerCount = Int(bytes.le16(56))
        guard headerSize == 56 else { throw .badProgramHeaders("entry size \(headerSize), expected 56") }
        guard headerCount > 0, headerCount <= Self.maximumProgramHeaders else {
            throw .badProgramHeaders("\(headerCount) entries")
        }
        guard headerOffset <= UInt64(bytes.count), UInt64(bytes.count) - headerOffset >= UInt64(headerSize * headerCount) else {
            throw .badProgramHeaders("table extends past the end of the file")
        }
        var segments: [LoadSegment] = []
        var pvhEntry: UInt64?
        for index in 0..<headerCount {
            let header = Int(headerOffset) + index * headerSize
            let kind = bytes.le32(header)
            let offset = bytes.le64(header + 8)
            let physical = bytes.le64(header + 24)
            let fileSize = bytes.le64(header + 32)
            let memorySize = bytes.le64(header + 40)
            guard offset <= UInt64(bytes.count), fileSize <= UInt64(bytes.count) - offset else {
                throw .segmentTruncated(index: index)
            }
            switch kind {
            case 1:  // PT_LOAD
                guard fileSize <= memorySize else { throw .segmentSizes(index: index) }
                guard memorySize > 0 else { continue }
                guard physical <= UInt64.max - memorySize else { throw .segmentSizes(index: index) }
                segments.append(LoadSegment(fileOffset: offset, fileSize: fileSize, physicalAddress: physical, memorySize: memorySize))
            case 4:  // PT_NOTE
                if let found = try Self.pvhEntry(notes: UnsafeRawBufferPointer(rebasing: bytes[Int(offset)..<Int(offset + fileSize)])) {
                    pvhEntry = found
                }
            default:
                continue
            }
        }
        guard !segments.isEmpty else { throw .noLoadableSegments }
        guard entry != 0 || pvhEntry != nil else { throw .noEntryPoint }
        self.segments = segments
        self.pvhEntry = pvhEntry
    }

    /// Scans a note segment for the Xen PVH entry note.
    static func pvhEntry(notes: UnsafeRawBufferPointer) throws(ImageFormatError) -> UInt64? {
        var position = 0
        while notes.count - position >= 12 {
            let nameSize = Int(notes.le32(position))
            let descriptionSize = Int(notes.le32(position + 4))
            let type = notes.le32(position + 8)
            let nameStart = position + 12
            let paddedName = (nameSize + 3) & ~3
            let descriptionStart = nameStart + paddedName
            let paddedDescription = (descriptionSize + 3) & ~3
            guard nameSize <= notes.count, descriptionSize <= notes.count,
                  descriptionStart <= notes.count, paddedDescription <= notes.count - descriptionStart else {
                throw .malformedNote("note at offset \(position) extends past its segment")
            }
            if type == pvhNoteType && nameSize == 4 && notes[nameStart] == 0x58 && notes[nameStart + 1] == 0x65
                && notes[nameStart + 2] == 0x6E && notes[nameStart + 3] == 0 {
                switch descriptionSize {
                case 4: return UInt64(notes.le32(descriptionStart))
                case 8: return notes.le64(descriptionStart)
                default: throw .malformedNote("PVH entry note has a \(descriptionSize)-byte descriptor, expected 4 or 8")
                }
            }
            position = descriptionStart + paddedDescription
        }
        return nil
    }
}

extension UnsafeRawBufferPointer {
    @inline(__always) func le16(_ offset: Int) -> UInt16 { UInt16(littleEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self)) }
    @inline(__always) func le32(_ offset: Int) -> UInt32 { UInt32(littleEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    @inline(__always) func le64(_ offset: Int) -> UInt64 { UInt64(littleEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
}

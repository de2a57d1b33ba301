import BootLoader
import Testing

/// Builds small ELF64 images in memory for parser tests.
struct ELFBuilder {
    var machine: UInt16 = 62
    var type: UInt16 = 2
    var entry: UInt64 = 0x10_0000
    var segments: [(physical: UInt64, payload: [UInt8], memorySize: UInt64)] = [(0x10_0000, [0x90, 0x90, 0xF4], 0x1000)]
    var note: [UInt8]? = ELFBuilder.pvhNote(entry: 0x10_0000)

    static func pvhNote(entry: UInt32, descriptorSize: Int = 4) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.append(le32: 4)
        bytes.append(le32: UInt32(descriptorSize))
        bytes.append(le32: 18)
        bytes.append(contentsOf: Array("Xen\0".utf8))
        if descriptorSize == 8 { bytes.append(le64: UInt64(entry)) } else { bytes.append(le32: entry) }
        return bytes
    }

    func build() -> [UInt8] {
        let headerCount = segments.count + (note == nil ? 0 : 1)
        var data: [UInt8] = []
        var offsets: [UInt64] = []
        var dataOffset = UInt64(64 + 56 * headerCount)
        for segment in segments {
            offsets.append(dataOffset)
            data.append(contentsOf: segment.payload)
            dataOffset += UInt64(segment.payload.count)
        }
        let noteOffset = dataOffset
        if let note { data.append(contentsOf: note) }

        var bytes: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        bytes.append(le16: type)
        bytes.append(le16: machine)
        bytes.append(le32: 1)
        bytes.append(le64: entry)
        bytes.append(le64: 64)  // e_phoff
        bytes.append(le64: 0)  // e_shoff
        bytes.append(le32: 0)  // e_flags
        bytes.append(le16: 64)
        bytes.append(le16: 56)
        bytes.append(le16: UInt16(headerCount))
        bytes.append(le16: 64)
        bytes.append(le16: 0)
        bytes.append(le16: 0)
        for (index, segment) in segments.enumerated() {
            bytes.append(le32: 1)
            bytes.append(le32: 7)
            bytes.append(le64: offsets[index])
            bytes.append(le64: segment.physical)
            bytes.append(le64: segment.physical)
            bytes.append(le64: UInt64(segment.payload.count))
            bytes.append(le64: segment.memorySize)
            bytes.append(le64: 0x1000)
        }
        if let note {
            bytes.append(le32: 4)
            bytes.append(le32: 4)
            bytes.append(le64: noteOffset)
            bytes.append(le64: 0)
            bytes.append(le64: 0)
            bytes.append(le64: UInt64(note.count))
            bytes.append(le64: UInt64(note.count))
            bytes.append(le64: 4)
        }
        return bytes + data
    }
}

extension Array where Element == UInt8 {
    mutating func append(le16 value: UInt16) { Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) } }
    mutating func append(le32 value: UInt32) { Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) } }
    mutating func append(le64 value: UInt64) { Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) } }
}

func parse(_ bytes: [UInt8]) throws(ImageFormatError) -> ELFImage {
    let result: Result<ELFImage, ImageFormatError> = bytes.withUnsafeBytes { buffer in
        Result { () throws(ImageFormatError) in try ELFImage(parsing: buffer) }
    }
    return try result.get()
}

@Suite struct ELFImageTests {
    @Test func parsesSegmentsAndPVHNote() throws {
        let image = try parse(ELFBuilder().build())
        #expect(image.entry == 0x10_0000)
        #expect(image.pvhEntry == 0x10_0000)
        #expect(image.segments == [LoadSegment(fileOffset: 176, fileSize: 3, physicalAddress: 0x10_0000, memorySize: 0x1000)])
    }

    @Test func acceptsEightBytePVHDescriptor() throws {
        var builder = ELFBuilder()
        builder.note = ELFBuilder.pvhNote(entry: 0x10_0040, descriptorSize: 8)
        #expect(try parse(builder.build()).pvhEntry == 0x10_0040)
    }

    @Test func plainImageHasNoPVHEntry() throws {
        var builder = ELFBuilder()
        builder.note = nil
        let image = try parse(builder.build())
        #expect(image.pvhEntry == nil)
        #expect(image.entry == 0x10_0000)
    }

    @Test func ignoresOtherNotes() throws {
        var builder = ELFBuilder()
        var note: [UInt8] = []
        note.append(le32: 4)
        note.append(le32: 4)
        note.append(le32: 3)
        note.append(contentsOf: Array("GNU\0".utf8))
        note.append(le32: 0x1234)
        builder.note = note + ELFBuilder.pvhNote(entry: 0x10_0010)
        #expect(try parse(builder.build()).pvhEntry == 0x10_0010)
    }

    @Test func rejectsGarbage() {
        #expect(throws: ImageFormatError.badMagic) { try parse([UInt8](repeating: 0x41, count: 200)) }
        #expect(throws: ImageFormatError.tooSmall(10)) { try parse([UInt8](repeating: 0, count: 10)) }
    }

    @Test func rejectsWrongClassMachineAndType() {
        var bytes = ELFBuilder().build()
        bytes[4] = 1
        #expect(throws: ImageFormatError.notELF64) { try parse(bytes) }
        var arm = ELFBuilder()
        arm.machine = 183
        #expect(throws: ImageFormatError.notX86_64(machine: 183)) { try parse(arm.build()) }
        var relocatable = ELFBuilder()
        relocatable.type = 1
        #expect(throws: ImageFormatError.notExecutable(type: 1)) { try parse(relocatable.build()) }
    }

    @Test func rejectsTruncatedImages() {
        let bytes = ELFBuilder().build()
        #expect(throws: ImageFormatError.badProgramHeaders("table extends past the end of the file")) { try parse(Array(bytes.prefix(100))) }
        #expect(throws: ImageFormatError.segmentTruncated(index: 0)) { try parse(Array(bytes.prefix(177))) }
    }

    @Test func rejectsSegmentLargerOnDiskThanInMemory() {
        var builder = ELFBuilder()
        builder.segments = [(0x10_0000, [1, 2, 3, 4], 2)]
        #expect(throws: ImageFormatError.segmentSizes(index: 0)) { try parse(builder.build()) }
    }

    @Test func rejectsImageWithoutEntry() {
        var builder = ELFBuilder()
        builder.entry = 0
        builder.note = nil
        #expect(throws: ImageFormatError.noEntryPoint) { try parse(builder.build()) }
    }

    @Test func rejectsNoteRunningPastItsSegment() {
        var builder = ELFBuilder()
        var note = ELFBuilder.pvhNote(entry: 0x10_0000)
        note[4] = 0xFF  // descriptor size far beyond the segment
        builder.note = note
        #expect(throws: ImageFormatError.self) { try parse(builder.build()) }
    }

    @Test func survivesEveryTruncationAndByteFlip() {
        let bytes = ELFBuilder().build()
        for length in 0..<bytes.count { _ = try? parse(Array(bytes.prefix(length))) }
        for position in 0..<bytes.count {
            var mutated = bytes
            mutated[position] ^= 0xFF
            _ = try? parse(mutated)
        }
    }
}

import BootLoader
import TestSupport
import Testing

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

    @Test func refusesEveryTruncationAndKeepsByteFlipsInsideTheFile() {
        let bytes = ELFBuilder().build()
        // The segment's bytes and the note end the file, so every shorter prefix loses one of them.
        for length in 0..<bytes.count {
            #expect(throws: ImageFormatError.self, "prefix of \(length) bytes") { try parse(Array(bytes.prefix(length))) }
        }
        // A flipped byte is refused or yields segments whose file bytes lie inside the file.
        for position in 0..<bytes.count {
            var mutated = bytes
            mutated[position] ^= 0xFF
            guard let image = try? parse(mutated) else { continue }
            for segment in image.segments {
                let end = segment.fileOffset.addingReportingOverflow(segment.fileSize)
                #expect(!end.overflow && end.partialValue <= UInt64(bytes.count), "byte \(position) flipped")
                #expect(segment.fileSize <= segment.memorySize, "byte \(position) flipped")
            }
        }
    }
}

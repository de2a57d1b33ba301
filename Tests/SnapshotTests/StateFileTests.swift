import KVM
import Snapshot
import TestSupport
import Testing

/// A small record for exercising the container.
private struct Sample: StateRecord, Equatable {
    static let tag = SectionTag("SMPL")
    static let version: UInt32 = 2
    var number: UInt64
    var name: String
    var flag: Bool

    func encode(into writer: inout StateWriter) {
        writer.write(number)
        writer.write(name)
        writer.write(flag)
    }

    static func decode(from reader: inout StateReader, version: UInt32) throws(StateError) -> Sample {
        Sample(number: try reader.read(), name: try reader.readString(), flag: version >= 2 ? try reader.readBool() : false)
    }
}

private func sampleVCPU(_ seed: UInt8) -> VCPUState {
    VCPUState(
        multiprocessingState: 0, registers: [UInt8](repeating: seed, count: VCPUState.ImageSize.registers),
        specialRegisters: [UInt8](repeating: seed &+ 1, count: VCPUState.ImageSize.specialRegisters),
        extendedState: [UInt8](repeating: seed &+ 2, count: 4096),
        extendedControlRegisters: [UInt8](repeating: 3, count: VCPUState.ImageSize.extendedControlRegisters),
        debugRegisters: [UInt8](repeating: 4, count: VCPUState.ImageSize.debugRegisters),
        localAPIC: [UInt8](repeating: 5, count: VCPUState.ImageSize.localAPIC),
        msrs: [MSRValue(index: 0x10, value: 12345), MSRValue(index: 0xC000_0102, value: .max)],
        events: [UInt8](repeating: 6, count: VCPUState.ImageSize.events), tscKHz: 2_400_000)
}

@Suite struct StateFileTests {
    @Test func recordsRoundTripInOrderWithTheirInstances() throws {
        var file = StateFile()
        file.append(Sample(number: 7, name: "first", flag: true))
        file.append(sampleVCPU(1), instance: 0)
        file.append(sampleVCPU(9), instance: 1)
        let decoded = try StateFile(decoding: file.encoded())
        #expect(decoded == file)
        #expect(try decoded.record(Sample.self) == Sample(number: 7, name: "first", flag: true))
        let vcpus = try decoded.records(VCPUState.self)
        #expect(vcpus.map(\.instance) == [0, 1])
        #expect(vcpus[1].record == sampleVCPU(9))
        #expect(throws: StateError.missingRecord(tag: "VCPU", instance: 2)) { try decoded.record(VCPUState.self, instance: 2) }
    }

    @Test func everyDamageIsNamed() throws {
        var file = StateFile()
        file.append(sampleVCPU(1))
        let bytes = file.encoded()
        #expect(throws: StateError.notAStateFile) { try StateFile(decoding: Array("TERNSNAP".utf8) + bytes.dropFirst(8)) }
        var newer = bytes
        newer[8] = 2
        #expect(throws: StateError.unsupportedFormatVersion(2)) { try StateFile(decoding: newer) }
        var flipped = bytes
        flipped[bytes.count - 100] ^= 0x01
        #expect(throws: StateError.self) { try StateFile(decoding: flipped) }
        if case .checksumMismatch = (Result { try StateFile(decoding: flipped) }.error as? StateError) {} else {
            Issue.record("a flipped payload byte must fail the checksum")
        }
        for length in [0, 7, 20, 31, 32, bytes.count - 1] {
            #expect(throws: StateError.self, "truncated to \(length)") { try StateFile(decoding: Array(bytes.prefix(length))) }
        }
    }

    @Test func aNewerRecordVersionIsRefusedAndAnOlderOneRead() throws {
        var file = StateFile()
        file.append(Sample(number: 1, name: "x", flag: true))
        var bytes = file.encoded()
        // The record's version sits at offset 4 of the first section, after the 32-byte header; rewrite the
        // checksum so that only the version is wrong.
        bytes[32 + 4] = 3
        let body = Array(bytes[32...])
        withUnsafeBytes(of: CRC32C.checksum(body).littleEndian) { bytes.replaceSubrange(24..<28, with: $0) }
        let decoded = try StateFile(decoding: bytes)
        #expect(throws: StateError.unsupportedRecordVersion(tag: "SMPL", version: 3)) { try decoded.record(Sample.self) }

        // Version 1 had no flag.
        var old = StateWriter()
        old.write(UInt64(5))
        old.write("old")
        var oldFile = StateFile()
        oldFile.append(StateSection(tag: Sample.tag, version: 1, instance: 0, payload: old.bytes))
        #expect(try StateFile(decoding: oldFile.encoded()).record(Sample.self) == Sample(number: 5, name: "old", flag: false))
    }

    @Test func hostileCountsAndLengthsFailWithoutAllocating() throws {
        // An MSR count of 2^40 in an otherwise small VCPU record.
        var writer = StateWriter()
        writer.write(UInt32(0))
        writer.write(UInt32(0))
        for _ in 0..<7 { writer.write([UInt8]()) }
        writer.write(UInt64(1) << 40)
        var reader = StateReader(writer.bytes, context: "test")
        #expect(throws: StateError.self) { try VCPUState.decode(from: &reader, version: 1) }
        var lengths = StateWriter()
        lengths.write(UInt64.max)
        var lengthReader = StateReader(lengths.bytes, context: "test")
        #expect(throws: StateError.self) { try lengthReader.readBytes() }
    }

    @Test func crc32cMatchesTheStandardCheckValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        var random = SplitMix64(state: 42)
        let data = (0..<1000).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        #expect(CRC32C.checksum(Array(data[500...]), seed: CRC32C.checksum(Array(data[..<500]))) == CRC32C.checksum(data))
    }
}

private extension Result {
    var error: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}

/// The SCSI (MMC) commands an ATAPI CD-ROM answers through PACKET, on 2048-byte blocks, with the sense data of the
/// last failure for REQUEST SENSE.
struct ATAPIEngine {
    enum Opcode {
        static let testUnitReady: UInt8 = 0x00
        static let requestSense: UInt8 = 0x03
        static let inquiry: UInt8 = 0x12
        static let startStopUnit: UInt8 = 0x1B
        static let preventAllowRemoval: UInt8 = 0x1E
        static let readCapacity: UInt8 = 0x25
        static let read10: UInt8 = 0x28
        static let readTOC: UInt8 = 0x43
        static let getConfiguration: UInt8 = 0x46
        static let getEventStatus: UInt8 = 0x4A
        static let modeSense10: UInt8 = 0x5A
        static let read12: UInt8 = 0xA8
        static let mechanismStatus: UInt8 = 0xBD
    }

    /// Sense keys and additional sense codes (SPC-4).
    enum Sense {
        static let illegalRequest: UInt8 = 0x05
        static let invalidOpcode: UInt8 = 0x20
        static let lbaOutOfRange: UInt8 = 0x21
        static let invalidField: UInt8 = 0x24
        static let mediumError: UInt8 = 0x03
    }

    let drive: DriveConfiguration
    private(set) var senseKey: UInt8 = 0
    private(set) var additionalSense: UInt8 = 0

    init(drive: DriveConfiguration) {
        self.drive = drive
    }

    /// Runs the 12-byte command `cdb`.
    mutating func execute(_ cdb: [UInt8], transfer: Transfer) -> CommandOutcome {
        let opcode = cdb[0]
        if opcode != Opcode.requestSense { (senseKey, additionalSense) = (0, 0) }
        switch opcode {
        case Opcode.testUnitReady, Opcode.startStopUnit, Opcode.preventAllowRemoval:
            return .completed(bytes: 0)
        case Opcode.requestSense:
            var sense = [UInt8](repeating: 0, count: 18)
            sense[0] = 0x70
            sense[2] = senseKey
            sense[7] = 10
            sense[12] = additionalSense
            (senseKey, additionalSense) = (0, 0)
            return .completed(bytes: transfer.dataIn(Array(sense.prefix(Int(cdb[4])))))
        case Opcode.inquiry:
            var data: [UInt8] = [0x05, 0x80, 0x05, 0x32, 31, 0, 0, 0]
            data += ascii("TERN", 8) + ascii(drive.model, 16) + ascii("1.0", 4)
            return .completed(bytes: transfer.dataIn(Array(data.prefix(Int(bigEndian16(cdb, 3))))))
        case Opcode.readCapacity:
            let last = UInt32(clamping: max(drive.blockCount, 1) - 1)
            return .completed(bytes: transfer.dataIn(bigEndian(last) + bigEndian(UInt32(drive.blockSize))))
        case Opcode.read10:
            return read(lba: UInt64(bigEndian32(cdb, 2)), count: UInt64(bigEndian16(cdb, 7)), transfer: transfer)
        case Opcode.read12:
            return read(lba: UInt64(bigEndian32(cdb, 2)), count: UInt64(bigEndian32(cdb, 6)), transfer: transfer)
        case Opcode.readTOC:
            guard cdb[2] & 0x0F == 0 else { return fail(Sense.illegalRequest, Sense.invalidField) }
            var toc: [UInt8] = [0, 18, 1, 1]
            toc += [0, 0x14, 1, 0] + bigEndian(UInt32(0))
            toc += [0, 0x14, 0xAA, 0] + bigEndian(UInt32(clamping: drive.blockCount))
            return .completed(bytes: transfer.dataIn(Array(toc.prefix(Int(bigEndian16(cdb, 7))))))
        case Opcode.getConfiguration:
            let header: [UInt8] = bigEndian(UInt32(4)) + [0, 0, 0, 0x08]  // current profile: CD-ROM
            return .completed(bytes: transfer.dataIn(Array(header.prefix(Int(bigEndian16(cdb, 7))))))
        case Opcode.getEventStatus:
            guard cdb[1] & 1 != 0 else { return fail(Sense.illegalRequest, Sense.invalidField) }
            let header: [UInt8] = [0, 2, 0x80, 0]  // no event classes supported
            return .completed(bytes: transfer.dataIn(Array(header.prefix(Int(bigEndian16(cdb, 7))))))
        case Opcode.modeSense10:
            let header: [UInt8] = [0, 6, 0x01, 0, 0, 0, 0, 0]  // no pages; medium type: 120 mm CD-ROM data
            return .completed(bytes: transfer.dataIn(Array(header.prefix(Int(bigEndian16(cdb, 7))))))
        case Opcode.mechanismStatus:
            return .completed(bytes: transfer.dataIn(Array([UInt8](repeating: 0, count: 8).prefix(Int(bigEndian16(cdb, 8))))))
        default:
            return fail(Sense.illegalRequest, Sense.invalidOpcode)
        }
    }

    private mutating func read(lba: UInt64, count: UInt64, transfer: Transfer) -> CommandOutcome {
        guard lba <= drive.blockCount, count <= drive.blockCount - lba else { return fail(Sense.illegalRequest, Sense.lbaOutOfRange) }
        let size = UInt64(drive.blockSize)
        let outcome = transfer.read(drive.backend, at: lba * size, length: Int(count * size))
        if case .failed = outcome { return fail(Sense.mediumError, 0x11) }
        return outcome
    }

    /// Records the sense data and fails with CHECK CONDITION: the sense key in the error register's high nibble.
    private mutating func fail(_ key: UInt8, _ code: UInt8) -> CommandOutcome {
        (senseKey, additionalSense) = (key, code)
        return .failed(error: key << 4 | ATAError.aborted)
    }

    private func ascii(_ text: String, _ width: Int) -> [UInt8] {
        let bytes = Array(text.utf8.prefix(width))
        return bytes + repeatElement(0x20, count: width - bytes.count)
    }

    private func bigEndian(_ value: UInt32) -> [UInt8] {
        [UInt8(truncatingIfNeeded: value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8),
         UInt8(truncatingIfNeeded: value)]
    }

    private func bigEndian16(_ bytes: [UInt8], _ offset: Int) -> UInt16 {
        UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    private func bigEndian32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        UInt32(bytes[offset]) << 24 | UInt32(bytes[offset + 1]) << 16 | UInt32(bytes[offset + 2]) << 8 | UInt32(bytes[offset + 3])
    }
}

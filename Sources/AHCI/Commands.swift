import GuestMemory
import Qcow2

/// A Register Host-to-Device FIS (SATA 3.x, 10.5.5) as the command table holds it.
struct CommandFIS {
    static let type: UInt8 = 0x27
    let bytes: [UInt8]

    var isCommand: Bool { bytes[0] == Self.type && bytes[1] & 0x80 != 0 }
    var command: UInt8 { bytes[2] }
    var features: UInt16 { UInt16(bytes[3]) | UInt16(bytes[11]) << 8 }
    var count: UInt16 { UInt16(bytes[12]) | UInt16(bytes[13]) << 8 }
    var lba48: UInt64 {
        [4, 5, 6, 8, 9, 10].enumerated().reduce(0) { $0 | UInt64(bytes[$1.element]) << (8 * UInt64($1.offset)) }
    }
    var lba28: UInt64 { UInt64(bytes[4]) | UInt64(bytes[5]) << 8 | UInt64(bytes[6]) << 16 | UInt64(bytes[7] & 0x0F) << 24 }
}

/// Moves one command's data between the backend, a bounce buffer and the guest's regions.
struct Transfer {
    let memory: GuestMemory
    let regions: ScatterList
    /// The controller's bounce buffer, reused across commands.
    let buffer: UnsafeMutableRawBufferPointer

    /// Copies `bytes` to the guest (at most what the regions hold); returns the count copied.
    func dataIn(_ bytes: [UInt8]) -> Int {
        let count = min(bytes.count, regions.totalLength)
        bytes.withUnsafeBytes { regions.scatter(UnsafeRawBufferPointer(rebasing: $0[0..<count]), at: 0, memory: memory) }
        return count
    }

    /// Reads `length` bytes of the backend at `offset` into the guest, chunk by chunk.
    func read(_ backend: any BlockBackend, at offset: UInt64, length: Int) -> CommandOutcome {
        guard length <= regions.totalLength else { return .failed(error: ATAError.aborted) }
        var done = 0
        while done < length {
            let count = min(buffer.count, length - done)
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
            do {
                try backend.read(at: offset + UInt64(done), into: chunk)
            } catch {
                return .failed(error: ATAError.uncorrectable)
            }
            regions.scatter(UnsafeRawBufferPointer(chunk), at: done, memory: memory)
            done += count
        }
        return .completed(bytes: length)
    }

    /// Writes `length` bytes from the guest to the backend at `offset`, chunk by chunk.
    func write(_ backend: any BlockBackend, at offset: UInt64, length: Int) -> CommandOutcome {
        guard length <= regions.totalLength else { return .failed(error: ATAError.aborted) }
        var done = 0
        while done < length {
            let count = min(buffer.count, length - done)
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
            regions.gather(into: chunk, at: done, memory: memory)
            do {
                try backend.write(at: offset + UInt64(done), from: UnsafeRawBufferPointer(chunk))
            } catch {
                return .failed(error: ATAError.uncorrectable)
            }
            done += count
        }
        return .completed(bytes: length)
    }
}

/// ATA commands (ATA8-ACS) a disk or CD-ROM answers.
enum ATACommand {
    static let readDMA: UInt8 = 0xC8
    static let readDMAExt: UInt8 = 0x25
    static let writeDMA: UInt8 = 0xCA
    static let writeDMAExt: UInt8 = 0x35
    static let readFPDMAQueued: UInt8 = 0x60
    static let writeFPDMAQueued: UInt8 = 0x61
    static let flushCache: UInt8 = 0xE7
    static let flushCacheExt: UInt8 = 0xEA
    static let identifyDevice: UInt8 = 0xEC
    static let identifyPacketDevice: UInt8 = 0xA1
    static let packet: UInt8 = 0xA0
    static let setFeatures: UInt8 = 0xEF
    static let readVerify: UInt8 = 0x40
    static let readVerifyExt: UInt8 = 0x42
    /// Commands that need nothing from the device but success: power management, SET MULTIPLE, INITIALIZE DEVICE
    /// PARAMETERS.
    static let accepted: Set<UInt8> = [0x91, 0xC6, 0xE0, 0xE1, 0xE2, 0xE3, 0xE5, 0xE6]

    /// Whether `command` is a queued (NCQ) command, completed through a Set Device Bits FIS.
    static func isQueued(_ command: UInt8) -> Bool {
        command == readFPDMAQueued || command == writeFPDMAQueued
    }
}

/// The ATA half of a drive: the commands above on the configured medium.
struct ATAEngine {
    let drive: DriveConfiguration
    var atapi: ATAPIEngine

    init(drive: DriveConfiguration) {
        self.drive = drive
        atapi = ATAPIEngine(drive: drive)
    }

    /// Runs `fis` (with `packet`, the ATAPI command, for PACKET) and moves its data through `transfer`.
    mutating func execute(_ fis: CommandFIS, packet: [UInt8], transfer: Transfer) -> CommandOutcome {
        let command = fis.command
        if drive.media == .cdrom {
            switch command {
            case ATACommand.identifyPacketDevice: return .completed(bytes: transfer.dataIn(IdentifyData.cdrom(drive)))
            case ATACommand.packet: return atapi.execute(packet, transfer: transfer)
            case ATACommand.setFeatures: return .completed(bytes: 0)
            default: return .failed(error: ATAError.aborted)
            }
        }
        switch command {
        case ATACommand.identifyDevice:
            return .completed(bytes: transfer.dataIn(IdentifyData.disk(drive)))
        case ATACommand.readDMA, ATACommand.readDMAExt, ATACommand.readFPDMAQueued,
             ATACommand.writeDMA, ATACommand.writeDMAExt, ATACommand.writeFPDMAQueued,
             ATACommand.readVerify, ATACommand.readVerifyExt:
            return readOrWrite(fis, transfer: transfer)
        case ATACommand.flushCache, ATACommand.flushCacheExt:
            do {
                try drive.backend.flush()
                return .completed(bytes: 0)
            } catch {
                return .failed(error: ATAError.aborted)
            }
        case ATACommand.setFeatures:
            return .completed(bytes: 0)
        case let other where ATACommand.accepted.contains(other):
            return .completed(bytes: 0)
        default:
            return .failed(error: ATAError.aborted)
        }
    }

    private func readOrWrite(_ fis: CommandFIS, transfer: Transfer) -> CommandOutcome {
        let command = fis.command
        let lba: UInt64
        let count: UInt64
        switch command {
        case ATACommand.readDMA, ATACommand.writeDMA, ATACommand.readVerify:
            lba = fis.lba28
            count = fis.bytes[12] == 0 ? 256 : UInt64(fis.bytes[12])
        case ATACommand.readFPDMAQueued, ATACommand.writeFPDMAQueued:
            lba = fis.lba48
            count = fis.features == 0 ? 65536 : UInt64(fis.features)
        default:
            lba = fis.lba48
            count = fis.count == 0 ? 65536 : UInt64(fis.count)
        }
        guard lba < drive.blockCount, count <= drive.blockCount - lba else { return .failed(error: ATAError.idNotFound) }
        let offset = lba * 512
        let length = Int(count) * 512
        switch command {
        case ATACommand.readVerify, ATACommand.readVerifyExt:
            return .completed(bytes: 0)
        case ATACommand.writeDMA, ATACommand.writeDMAExt, ATACommand.writeFPDMAQueued:
            guard !drive.readOnly else { return .failed(error: ATAError.aborted) }
            return transfer.write(drive.backend, at: offset, length: length)
        default:
            return transfer.read(drive.backend, at: offset, length: length)
        }
    }
}

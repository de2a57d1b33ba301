import GuestMemory

/// One AHCI port (AHCI 1.3.1, 3.3): its registers, the drive behind it and the command engine that walks the
/// command list.
struct AHCIPort {
    enum Register {
        static let commandListBase: UInt64 = 0x00
        static let commandListBaseHigh: UInt64 = 0x04
        static let fisBase: UInt64 = 0x08
        static let fisBaseHigh: UInt64 = 0x0C
        static let interruptStatus: UInt64 = 0x10
        static let interruptEnable: UInt64 = 0x14
        static let command: UInt64 = 0x18
        static let taskFile: UInt64 = 0x20
        static let signature: UInt64 = 0x24
        static let sataStatus: UInt64 = 0x28
        static let sataControl: UInt64 = 0x2C
        static let sataError: UInt64 = 0x30
        static let sataActive: UInt64 = 0x34
        static let commandIssue: UInt64 = 0x38
    }
    /// PxCMD bits.
    enum Command {
        static let start: UInt32 = 1 << 0
        static let spinUp: UInt32 = 1 << 1
        static let powerOn: UInt32 = 1 << 2
        static let fisReceiveEnable: UInt32 = 1 << 4
        static let fisReceiveRunning: UInt32 = 1 << 14
        static let listRunning: UInt32 = 1 << 15
        static let writable: UInt32 = start | spinUp | powerOn | fisReceiveEnable
    }
    /// PxIS bits.
    enum Interrupt {
        static let deviceToHost: UInt32 = 1 << 0
        static let setDeviceBits: UInt32 = 1 << 3
        static let hostBusFatal: UInt32 = 1 << 29
        static let taskFileError: UInt32 = 1 << 30
        static let all: UInt32 = 0xFDC0_00FF
    }
    /// Offsets of the received FISes in the FIS area (AHCI 1.3.1, 4.2.1).
    enum ReceivedFIS {
        static let deviceToHost: UInt64 = 0x40
        static let setDeviceBits: UInt64 = 0x58
        static let areaSize: UInt64 = 256
    }

    var engine: ATAEngine?
    var commandListBase: UInt64 = 0
    var fisBase: UInt64 = 0
    var interruptStatus: UInt32 = 0
    var interruptEnable: UInt32 = 0
    var command: UInt32 = 0
    var taskFile: UInt32 = 0x7F
    var sataControl: UInt32 = 0
    var sataError: UInt32 = 0
    var active: UInt32 = 0
    var issued: UInt32 = 0
    /// A command failed: nothing more runs until the guest clears PxCMD.ST.
    var stalled = false
    var regions = ScatterList()

    init(drive: DriveConfiguration?) {
        engine = drive.map(ATAEngine.init)
        reset()
    }

    /// The state after an HBA or port reset: stopped, nothing issued, the device's signature posted.
    mutating func reset() {
        interruptStatus = 0
        interruptEnable = 0
        command = 0
        sataError = 0
        active = 0
        issued = 0
        stalled = false
        taskFile = engine == nil ? 0x7F : UInt32(ATAStatus.good)
    }

    var pendingInterrupt: Bool { interruptStatus & interruptEnable != 0 }

    func read(_ register: UInt64) -> UInt32 {
        switch register {
        case Register.commandListBase: UInt32(truncatingIfNeeded: commandListBase)
        case Register.commandListBaseHigh: UInt32(truncatingIfNeeded: commandListBase >> 32)
        case Register.fisBase: UInt32(truncatingIfNeeded: fisBase)
        case Register.fisBaseHigh: UInt32(truncatingIfNeeded: fisBase >> 32)
        case Register.interruptStatus: interruptStatus
        case Register.interruptEnable: interruptEnable
        case Register.command:
            command | (command & Command.fisReceiveEnable != 0 ? Command.fisReceiveRunning : 0)
                | (command & Command.start != 0 ? Command.listRunning : 0)
        case Register.taskFile: taskFile
        case Register.signature: engine.map { $0.drive.signature } ?? 0xFFFF_FFFF
        // Device present with the PHY up, Gen 1, active; nothing attached: no device.
        case Register.sataStatus: engine == nil ? 0 : 0x113
        case Register.sataControl: sataControl
        case Register.sataError: sataError
        case Register.sataActive: active
        case Register.commandIssue: issued
        default: 0
        }
    }

    /// Handles a register write; returns whether commands may now be runnable.
    mutating func write(_ register: UInt64, value: UInt32) -> Bool {
        let running = command & Command.start != 0
        switch register {
        case Register.commandListBase: commandListBase = commandListBase & ~0xFFFF_FFFF | UInt64(value & ~0x3FF)
        case Register.commandListBaseHigh: commandListBase = commandListBase & 0xFFFF_FFFF | UInt64(value) << 32
        case Register.fisBase: fisBase = fisBase & ~0xFFFF_FFFF | UInt64(value & ~0xFF)
        case Register.fisBaseHigh: fisBase = fisBase & 0xFFFF_FFFF | UInt64(value) << 32
        case Register.interruptStatus: interruptStatus &= ~value
        case Register.interruptEnable: interruptEnable = value & Interrupt.all
        case Register.command:
            command = value & Command.writable
            if running && value & Command.start == 0 {
                // Stopping the list clears what was issued and any error stall (AHCI 1.3.1, 3.3.14).
                issued = 0
                active = 0
                stalled = false
            }
            return command & Command.start != 0 && issued != 0
        case Register.sataControl:
            sataControl = value
            if value & 0xF == 1 { reset() }  // COMRESET
        case Register.sataError: sataError &= ~value
        case Register.sataActive:
            if running { active |= value }
        case Register.commandIssue:
            guard running else { return false }
            issued |= value
            return true
        default:
            break
        }
        return false
    }

    /// Runs the issued commands in slot order, moving data through `buffer`. `failure` receives why the first
    /// malformed one failed.
    mutating func run(memory: GuestMemory, busMaster: Bool, buffer: UnsafeMutableRawBufferPointer, failure: inout String?) {
        guard command & Command.start != 0, !stalled else { return }
        for slot in 0..<32 where issued & (1 << UInt32(slot)) != 0 && !stalled {
            let outcome: CommandOutcome
            let queued: Bool
            var tag = slot
            do throws(CommandError) {
                guard busMaster else { throw .busMasterDisabled }
                (outcome, queued, tag) = try execute(slot: slot, memory: memory, buffer: buffer)
            } catch {
                failure = error.description
                complete(slot: slot, tag: tag, outcome: .failed(error: ATAError.aborted), queued: false, memory: memory)
                interruptStatus |= Interrupt.hostBusFatal
                continue
            }
            complete(slot: slot, tag: tag, outcome: outcome, queued: queued, memory: memory)
        }
    }

    enum CommandError: Error, CustomStringConvertible {
        case busMasterDisabled
        case headerOutsideRAM(UInt64)
        case tableOutsideRAM(UInt64)
        case regions(ScatterList.ScatterError)
        case noDrive

        var description: String {
            switch self {
            case .busMasterDisabled: "command issued with bus mastering off"
            case .headerOutsideRAM(let address): "command header at 0x\(String(address, radix: 16)) outside guest RAM"
            case .tableOutsideRAM(let address): "command table at 0x\(String(address, radix: 16)) outside guest RAM"
            case .regions(.tableOutsideRAM(let address)): "region table at 0x\(String(address, radix: 16)) outside guest RAM"
            case .regions(.regionOutsideRAM(let address, let length)):
                "data region 0x\(String(address, radix: 16))+0x\(String(length, radix: 16)) outside guest RAM"
            case .noDrive: "command issued to a port with no drive"
            }
        }
    }

    /// Reads slot `slot`'s header, table and regions and runs its command.
    private mutating func execute(slot: Int, memory: GuestMemory, buffer: UnsafeMutableRawBufferPointer)
        throws(CommandError) -> (CommandOutcome, queued: Bool, tag: Int)
    {
        let header = commandListBase &+ UInt64(slot) * 32
        let flags: UInt32
        let tableAddress: UInt64
        do {
            flags = try memory.load(UInt32.self, at: header)
            tableAddress = UInt64(try memory.load(UInt32.self, at: header + 12)) << 32
                | UInt64(try memory.load(UInt32.self, at: header + 8) & ~0x7F)
        } catch {
            throw .headerOutsideRAM(header)
        }
        let fisBytes: [UInt8]
        let packet: [UInt8]
        do {
            fisBytes = try memory.bytes(at: tableAddress, count: 20)
            packet = try memory.bytes(at: tableAddress &+ 0x40, count: 16)
        } catch {
            throw .tableOutsideRAM(tableAddress)
        }
        do {
            try regions.load(table: tableAddress &+ 0x80, count: Int(flags >> 16), memory: memory)
        } catch {
            throw .regions(error)
        }
        guard var engine else { throw .noDrive }
        let fis = CommandFIS(bytes: fisBytes)
        let queued = ATACommand.isQueued(fis.command)
        let tag = queued ? Int(fisBytes[12] >> 3) : slot
        guard fis.isCommand else { return (.failed(error: ATAError.aborted), queued, tag) }
        let outcome = engine.execute(fis, packet: packet,
                                     transfer: Transfer(memory: memory, regions: regions, buffer: buffer))
        self.engine = engine
        if case .completed(let bytes) = outcome, !queued {
            try? memory.store(UInt32(truncatingIfNeeded: bytes), at: header + 4)  // PRDBC
        }
        return (outcome, queued, tag)
    }

    /// Posts the outcome: the task file, a received FIS, PxIS; clears the slot unless the command failed.
    private mutating func complete(slot: Int, tag: Int, outcome: CommandOutcome, queued: Bool, memory: GuestMemory) {
        let status: UInt8
        let error: UInt8
        switch outcome {
        case .completed:
            (status, error) = (ATAStatus.good, 0)
        case .failed(let code):
            (status, error) = (ATAStatus.good | ATAStatus.error, code)
        }
        taskFile = UInt32(error) << 8 | UInt32(status)
        let receiving = command & Command.fisReceiveEnable != 0
            && memory.contains(fisBase, length: ReceivedFIS.areaSize)
        if case .completed = outcome, queued {
            active &= ~(1 << UInt32(tag & 31))
            if receiving {
                try? memory.write([0xA1, 0x40, status & 0x77, error], at: fisBase + ReceivedFIS.setDeviceBits)
                try? memory.store(UInt32(1) << UInt32(tag & 31), at: fisBase + ReceivedFIS.setDeviceBits + 4)
            }
            interruptStatus |= Interrupt.setDeviceBits
        } else if receiving {
            var fis = [UInt8](repeating: 0, count: 20)
            fis[0] = 0x34
            fis[1] = 0x40  // interrupt
            fis[2] = status
            fis[3] = error
            try? memory.write(fis, at: fisBase + ReceivedFIS.deviceToHost)
        }
        if case .completed = outcome {
            issued &= ~(1 << UInt32(slot))
            if !queued { interruptStatus |= Interrupt.deviceToHost }
        } else {
            interruptStatus |= Interrupt.taskFileError | Interrupt.deviceToHost
            stalled = true
        }
    }
}

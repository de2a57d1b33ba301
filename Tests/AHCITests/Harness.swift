@testable import AHCI
import GuestMemory
import Qcow2
import TestSupport


/// A controller with one drive on port 0, driven as a guest driver does: a command list at 0x10000, received FISes
/// at 0x11000, command tables from 0x20000 (one 4 KiB page per slot), data buffers from 0x100000.
struct AHCIHarness {
    static let commandList: UInt64 = 0x10000
    static let receivedFIS: UInt64 = 0x11000
    static let tables: UInt64 = 0x20000
    static let data: UInt64 = 0x10_0000

    let memory: GuestMemory
    let file: MemoryFile
    let controller: AHCIController
    let line = RecordingLine()
    let log = LogLines()

    /// A drive of `blocks` blocks whose byte at offset `o` is `pattern(o)`.
    init(media: DriveConfiguration.Media = .disk, blocks: Int = 64, readOnly: Bool = false) throws {
        memory = try GuestMemory(size: 4 << 20)
        let blockSize = media == .disk ? 512 : 2048
        file = MemoryFile((0..<blocks * blockSize).map(Self.pattern), writable: !readOnly)
        let backend = try RawBackend(file: file)
        let drive = DriveConfiguration(media: media, backend: backend, readOnly: readOnly, serial: "TERN123")
        controller = AHCIController(drives: [drive], memory: memory, interrupt: line, interruptLineRegister: 20, log: log.sink)
        controller.writeConfiguration(offset: 0x04, width: 2, value: 0x0006)  // memory space, bus master
    }

    static func pattern(_ offset: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: offset / 512 &* 7 &+ offset)
    }

    func read(_ offset: UInt64) -> UInt32 {
        var value: UInt32 = 0
        withUnsafeMutableBytes(of: &value) { controller.readBAR(AHCIController.barIndex, offset: offset, into: $0) }
        return value
    }

    func write(_ offset: UInt64, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { controller.writeBAR(AHCIController.barIndex, offset: offset, from: $0) }
    }

    func port(_ register: UInt64) -> UInt32 { read(0x100 + register) }
    func setPort(_ register: UInt64, _ value: UInt32) { write(0x100 + register, value) }

    /// Points port 0 at the list and FIS area and starts it.
    func start() {
        setPort(AHCIPort.Register.commandListBase, UInt32(Self.commandList))
        setPort(AHCIPort.Register.fisBase, UInt32(Self.receivedFIS))
        setPort(AHCIPort.Register.command, AHCIPort.Command.fisReceiveEnable | AHCIPort.Command.start)
    }

    /// A Register H2D FIS for `command` at `lba` with `count`.
    static func fis(_ command: UInt8, lba: UInt64 = 0, count: UInt16 = 0, features: UInt16 = 0) -> [UInt8] {
        var fis = [UInt8](repeating: 0, count: 20)
        fis[0] = 0x27
        fis[1] = 0x80
        fis[2] = command
        fis[3] = UInt8(truncatingIfNeeded: features)
        for (index, offset) in [4, 5, 6, 8, 9, 10].enumerated() { fis[offset] = UInt8(truncatingIfNeeded: lba >> (8 * UInt64(index))) }
        fis[7] = 0x40
        fis[11] = UInt8(truncatingIfNeeded: features >> 8)
        fis[12] = UInt8(truncatingIfNeeded: count)
        fis[13] = UInt8(truncatingIfNeeded: count >> 8)
        return fis
    }

    /// Writes slot `slot`'s header and table (the FIS, the ATAPI packet, `regions` as (address, bytes)) and issues it.
    func issue(slot: Int = 0, fis: [UInt8], packet: [UInt8] = [], regions: [(UInt64, Int)], write: Bool = false,
               prdtCount: Int? = nil, table: UInt64? = nil, queued: Bool = false) throws {
        let table = table ?? Self.tables + UInt64(slot) * 0x1000
        var flags = UInt32(5) | UInt32(prdtCount ?? regions.count) << 16
        if !packet.isEmpty { flags |= 1 << 5 }
        if write { flags |= 1 << 6 }
        let header = Self.commandList + UInt64(slot) * 32
        try memory.store(flags, at: header)
        try memory.store(UInt32(0xFFFF_FFFF), at: header + 4)
        try memory.store(UInt32(truncatingIfNeeded: table), at: header + 8)
        try memory.store(UInt32(truncatingIfNeeded: table >> 32), at: header + 12)
        if memory.contains(table, length: 0x80) {
            try memory.write(fis, at: table)
            try memory.write(packet + [UInt8](repeating: 0, count: 16 - packet.count), at: table + 0x40)
            for (index, region) in regions.enumerated() {
                let entry = table + 0x80 + UInt64(index) * 16
                try memory.store(UInt32(truncatingIfNeeded: region.0), at: entry)
                try memory.store(UInt32(truncatingIfNeeded: region.0 >> 32), at: entry + 4)
                try memory.store(UInt32(region.1 - 1), at: entry + 12)
            }
        }
        if queued { setPort(AHCIPort.Register.sataActive, 1 << UInt32(slot)) }
        setPort(AHCIPort.Register.commandIssue, 1 << UInt32(slot))
    }

    /// PRDBC of slot `slot`: bytes the last command moved.
    func transferred(slot: Int = 0) throws -> UInt32 {
        try memory.load(UInt32.self, at: Self.commandList + UInt64(slot) * 32 + 4)
    }
}

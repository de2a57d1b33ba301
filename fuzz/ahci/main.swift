// libFuzzer target: the AHCI controller driven by a hostile guest. The input is a program of register writes and
// writes into the first 64 KiB of guest RAM (where command lists, tables, FISes and region tables point, or not),
// against a disk or a CD-ROM. A crash, a hang, an access outside guest RAM, a port left busy or a command left issued
// without an error is a bug. `Program` comes from fuzz/common/Program.swift.

import AHCI
import Devices
import GuestMemory
import PCI
import Qcow2

/// Guest RAM shared by all runs; the window the program writes is cleared before each.
let memory = try! GuestMemory(size: GuestMemory.minimumSize)
let window = 64 << 10
let disk = try! RawBackend(file: MemoryFile((0..<64 * 2048).map { UInt8(truncatingIfNeeded: $0 / 512) }))

/// An interrupt line that goes nowhere.
final class Unwired: InterruptLine {
    func setLevel(_ asserted: Bool) {}
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAHCI(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var program = Program(bytes: UnsafeRawBufferPointer(start: data, count: size))
    try! memory.zero(at: 0, length: UInt64(window))
    let media: DriveConfiguration.Media = program.next(UInt8.self) & 1 == 0 ? .disk : .cdrom
    let drive = DriveConfiguration(media: media, backend: disk, readOnly: false, serial: "FUZZ")
    let controller = AHCIController(drives: [drive], memory: memory, interrupt: Unwired(), interruptLineRegister: 16) { _ in }
    controller.writeConfiguration(offset: 0x04, width: 2, value: 0x0006)
    func write(_ offset: UInt64, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { controller.writeBAR(5, offset: offset, from: $0) }
    }
    func read(_ offset: UInt64) -> UInt32 {
        var value: UInt32 = 0
        withUnsafeMutableBytes(of: &value) { controller.readBAR(5, offset: offset, into: $0) }
        return value
    }
    var steps = 0
    while !program.done && steps < 256 {
        steps += 1
        switch program.next(UInt8.self) % 4 {
        case 0:
            // Any register, any value.
            write(UInt64(program.next(UInt16.self) & 0xFFC), program.next())
        case 1:
            // Eight bytes anywhere in the window: headers, tables, FISes, region entries.
            let address = UInt64(program.next(UInt16.self)) % UInt64(window - 8)
            try! memory.store(program.next(UInt64.self), at: address)
        case 2:
            // Port 0 pointed into the window (or anywhere), started, and slots issued.
            let list: UInt32 = program.next(UInt8.self) & 0x80 != 0 ? program.next() : UInt32(program.next(UInt8.self)) << 10
            write(0x100, list)
            write(0x108, UInt32(program.next(UInt8.self)) << 8)
            write(0x118, 0x11)
            write(0x134, program.next())
            write(0x138, program.next())
            precondition(read(0x120) & 0x80 == 0, "port 0 left busy")
            // Every issued command ran to an end: its slot cleared, or the port stalled with ERR in PxTFD.
            precondition(read(0x138) == 0 || read(0x120) & 0x01 != 0, "port 0 left a command issued without an error")
        default:
            _ = read(UInt64(program.next(UInt16.self) & 0xFFC))
        }
    }
    return 0
}

// libFuzzer target: the fw_cfg device driven by a hostile guest. The input is a program of port accesses and DMA
// descriptors (placed anywhere, with any control word, length and buffer address) against the items SeaBIOS
// reads. Every DMA whose descriptor lies in RAM must end with its control word 0 or the error bit; a crash, a
// hang or an access outside guest RAM is a bug. `Program` comes from fuzz/common/Program.swift.

import GuestMemory

/// Guest RAM shared by all runs.
let memory = try! GuestMemory(size: GuestMemory.minimumSize)
/// Items of every shape: the fixed ones, a small file and one larger than a DMA buffer in the window.
let items: FirmwareConfigItems = {
    var items = FirmwareConfigItems()
    items.set(FirmwareConfigItems.Key.ramSize, integer: memory.size)
    try! items.addFile("etc/small", [1, 2, 3])
    try! items.addFile("etc/large", (0..<70_000).map { UInt8(truncatingIfNeeded: $0) })
    return items
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFirmwareConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let device = FirmwareConfigDevice(items: items, memory: memory)
    var program = Program(bytes: UnsafeRawBufferPointer(start: data, count: size))
    var steps = 0
    while !program.done && steps < 256 {
        steps += 1
        switch program.next(UInt8.self) % 5 {
        case 0:
            let key: UInt16 = program.next()
            withUnsafeBytes(of: key) { device.write(offset: 0, from: $0) }
        case 1:
            var buffer = [UInt8](repeating: 0, count: Int(program.next(UInt8.self) % 9))
            buffer.withUnsafeMutableBytes { device.read(offset: 1, into: $0) }
        case 2:
            // A descriptor in the low 64 KiB, near the end of RAM or anywhere.
            let choice: UInt8 = program.next()
            let raw: UInt64 = program.next()
            let descriptor = choice % 3 == 0 ? raw % 0x1_0000 : choice % 3 == 1 ? memory.size - raw % 32 : raw
            let control: UInt32 = program.next()
            let length = choice & 0x80 != 0 ? UInt32(program.next(UInt16.self)) : program.next(UInt32.self)
            let buffer: UInt64 = choice & 0x40 != 0 ? UInt64(program.next(UInt32.self)) % memory.size : program.next()
            let inRAM = memory.contains(descriptor, length: 16)
            if inRAM {
                try! memory.store(control.bigEndian, at: descriptor)
                try! memory.store(length.bigEndian, at: descriptor + 4)
                try! memory.store(buffer.bigEndian, at: descriptor + 8)
            }
            withUnsafeBytes(of: UInt32(truncatingIfNeeded: descriptor >> 32).bigEndian) { device.write(offset: 4, from: $0) }
            withUnsafeBytes(of: UInt32(truncatingIfNeeded: descriptor).bigEndian) { device.write(offset: 8, from: $0) }
            if inRAM {
                let outcome = UInt32(bigEndian: try! memory.load(UInt32.self, at: descriptor))
                precondition(outcome == 0 || outcome == FirmwareConfigDevice.Control.error, "control word left at \(outcome)")
            }
        case 3:
            let offset = UInt64(program.next(UInt8.self) % 12)
            var value: UInt64 = program.next()
            let width = Int(program.next(UInt8.self) % 9)
            withUnsafeBytes(of: &value) { device.write(offset: offset, from: UnsafeRawBufferPointer(rebasing: $0[0..<width])) }
        default:
            let offset = UInt64(program.next(UInt8.self) % 12)
            var buffer = [UInt8](repeating: 0, count: Int(program.next(UInt8.self) % 9))
            buffer.withUnsafeMutableBytes { device.read(offset: offset, into: $0) }
        }
    }
    return 0
}

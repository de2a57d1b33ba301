import Firmware
import GuestMemory
import TestSupport

/// Drives a fw_cfg device as a guest does: port accesses and DMA descriptors in guest RAM.
struct FirmwareConfigDriver {
    let device: FirmwareConfigDevice
    let memory: GuestMemory

    func select(_ key: UInt16) {
        withUnsafeBytes(of: key.littleEndian) { device.write(offset: 0, from: $0) }
    }

    func readData(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xAA, count: count)
        for index in 0..<count {
            bytes.withUnsafeMutableBytes { device.read(offset: 1, into: UnsafeMutableRawBufferPointer(rebasing: $0[index..<index + 1])) }
        }
        return bytes
    }

    /// Writes a descriptor at `descriptor` and starts it through the two address registers.
    func dma(control: UInt32, length: UInt32, buffer: UInt64, descriptor: UInt64 = 0x1000) throws {
        try memory.store(control.bigEndian, at: descriptor)
        try memory.store(length.bigEndian, at: descriptor + 4)
        try memory.store(buffer.bigEndian, at: descriptor + 8)
        start(descriptor: descriptor)
    }

    /// Writes `address` to the DMA registers, high half first.
    func start(descriptor address: UInt64) {
        withUnsafeBytes(of: UInt32(truncatingIfNeeded: address >> 32).bigEndian) { device.write(offset: 4, from: $0) }
        withUnsafeBytes(of: UInt32(truncatingIfNeeded: address).bigEndian) { device.write(offset: 8, from: $0) }
    }

    /// The control word of the descriptor at `descriptor`, as the device left it.
    func control(descriptor: UInt64 = 0x1000) throws -> UInt32 {
        UInt32(bigEndian: try memory.load(UInt32.self, at: descriptor))
    }
}

extension Array where Element == UInt8 {
    func littleEndian<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size { value |= T(self[offset + index]) << (8 * index) }
        return value
    }

    func bigEndian<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size { value = value << 8 | T(self[offset + index]) }
        return value
    }
}

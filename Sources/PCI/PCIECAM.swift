import Devices

/// The PCIe enhanced configuration access mechanism (ECAM, PCIe 6.0 §7.2.2) as an MMIO window: 4 KiB of
/// configuration space per function, the bus number in address bits 27:20, the device in 19:15, the function in
/// 14:12. Register it at the MCFG's base with `busSize` bytes per bus it covers; Tern covers bus 0 only, 1 MiB.
///
/// Accesses of 1, 2 or 4 bytes within one aligned dword reach the function; absent functions, other buses and
/// any other access read as all ones and ignore writes.
public final class PCIECAM: BusDevice {
    /// Bytes of configuration space per bus.
    public static let busSize: UInt64 = 1 << 20

    private let root: PCIRoot

    public init(root: PCIRoot) {
        self.root = root
    }

    /// The function and register an offset in the window addresses.
    private static func decode(_ offset: UInt64) -> (PCIAddress, Int)? {
        guard offset < 256 * busSize else { return nil }
        let address = PCIAddress(bus: UInt8(offset >> 20), device: UInt8(offset >> 15 & 31), function: UInt8(offset >> 12 & 7))
        return (address, Int(offset & 0xFFF))
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard data.count <= 4, let (address, register) = Self.decode(offset) else {
            return fillAllOnes(data)
        }
        let value = root.readConfiguration(address, offset: register, width: data.count)
        for index in 0..<data.count { data[index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard data.count <= 4, let (address, register) = Self.decode(offset) else { return }
        root.writeConfiguration(address, offset: register, width: data.count, value: littleEndianValue(data))
    }
}

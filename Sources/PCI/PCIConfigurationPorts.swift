import Devices
import Synchronization

/// Configuration mechanism #1 (PCI Local Bus 3.0 §3.2.2.3.2): CONFIG_ADDRESS at port 0xCF8 and CONFIG_DATA at
/// 0xCFC–0xCFF. Register it at `basePort` with `portCount` ports.
///
/// Only a dword write at 0xCF8 latches CONFIG_ADDRESS (enable bit 31, bus 23:16, device 15:11, function 10:8,
/// dword register 7:2; the reserved bits read as zero), and only a dword read there returns it; other accesses to
/// 0xCF8–0xCFB are ordinary I/O that nothing claims (all ones, writes ignored), as the specification has it. A
/// 1-, 2- or 4-byte access at 0xCFC + n reaches register `(CONFIG_ADDRESS & 0xFC) + n` while the enable bit is
/// set and the access stays within the dword; otherwise it reads all ones and writes are ignored.
public final class PCIConfigurationPorts: BusDevice {
    /// CONFIG_ADDRESS.
    public static let basePort: UInt64 = 0xCF8
    /// CONFIG_ADDRESS and CONFIG_DATA together.
    public static let portCount: UInt64 = 8
    /// CONFIG_ADDRESS bit 31: the next CONFIG_DATA access is a configuration access.
    public static let enableBit: UInt32 = 1 << 31

    private let root: PCIRoot
    /// The latched CONFIG_ADDRESS; one for the machine, as on real chipsets (guests serialise their accesses).
    private let address = Mutex<UInt32>(0)

    public init(root: PCIRoot) {
        self.root = root
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        var value = PCIConfigurationAccess.absent(width: data.count)
        if offset == 0 && data.count == 4 {
            value = address.withLock { $0 }
        } else if let (function, register) = target(offset, width: data.count) {
            value = root.readConfiguration(function, offset: register, width: data.count)
        }
        for index in 0..<data.count { data[index] = index < 4 ? UInt8(truncatingIfNeeded: value >> (8 * index)) : 0xFF }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        if offset == 0 && data.count == 4 {
            let value = littleEndianValue(data) & (Self.enableBit | 0x00FF_FFFC)
            return address.withLock { $0 = value }
        }
        guard let (function, register) = target(offset, width: data.count) else { return }
        root.writeConfiguration(function, offset: register, width: data.count, value: littleEndianValue(data))
    }

    /// The function and register a CONFIG_DATA access of `width` bytes at port offset `offset` reaches.
    private func target(_ offset: UInt64, width: Int) -> (PCIAddress, Int)? {
        guard offset >= 4, offset < Self.portCount, Int(offset - 4) + width <= 4 else { return nil }
        let value = address.withLock { $0 }
        guard value & Self.enableBit != 0 else { return nil }
        let function = PCIAddress(
            bus: UInt8(value >> 16 & 0xFF), device: UInt8(value >> 11 & 31), function: UInt8(value >> 8 & 7))
        return (function, Int(value & 0xFC) + Int(offset - 4))
    }
}

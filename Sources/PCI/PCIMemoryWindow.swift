import Devices

/// A host bridge MMIO window as a bus device: guest accesses inside it go to whichever function's mapped BAR holds
/// them (see `PCIRoot`); the rest read as all ones. Register it at `base` with the window's size, for Tern the
/// 32-bit window 0xC000_0000–0xDFFF_FFFF. BARs the guest programs outside every window are unreachable.
public final class PCIMemoryWindow: BusDevice {
    /// Guest-physical address of the window's first byte.
    public let base: UInt64
    private let root: PCIRoot

    public init(root: PCIRoot, base: UInt64) {
        self.root = root
        self.base = base
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        root.readMemory(at: base &+ offset, into: data)
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        root.writeMemory(at: base &+ offset, from: data)
    }
}

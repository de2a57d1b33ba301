/// A PCI function: its configuration space and the memory its BARs decode.
///
/// The root (`PCIRoot`) passes on only configuration accesses of 1, 2 or 4 bytes that stay within one aligned
/// dword below 4096, and memory accesses that lie wholly inside a BAR the function reported as mapped. Calls come
/// from vCPU threads, several at once, so functions protect their own state. Nothing the guest does may trap.
public protocol PCIDevice: AnyObject, Sendable {
    /// The `width`-byte little-endian value at configuration `offset`.
    func readConfiguration(offset: Int, width: Int) -> UInt32
    /// Writes the low `width` bytes of `value` at configuration `offset`.
    func writeConfiguration(offset: Int, width: Int, value: UInt32)
    /// The BARs the function decodes now; the root asks after each write to the Command register or a BAR.
    func mappedBARs() -> [PCIMappedBAR]
    /// Fills `data` from offset `offset` of BAR `index`.
    func readBAR(_ index: Int, offset: UInt64, into data: UnsafeMutableRawBufferPointer)
    /// Writes `data` at offset `offset` of BAR `index`.
    func writeBAR(_ index: Int, offset: UInt64, from data: UnsafeRawBufferPointer)
}

/// The configuration accesses a root passes on to a function.
public enum PCIConfigurationAccess {
    /// Whether a `width`-byte access at `offset` is one the root passes on: 1, 2 or 4 bytes inside one aligned
    /// dword of the 4 KiB configuration space.
    public static func isValid(offset: Int, width: Int) -> Bool {
        (width == 1 || width == 2 || width == 4) && (0..<PCIConfigSpace.extendedSize).contains(offset)
            && offset % 4 + width <= 4
    }

    /// What a read of `width` bytes returns when no function answers: all ones.
    public static func absent(width: Int) -> UInt32 {
        width >= 4 ? .max : (1 << (8 * UInt32(width))) - 1
    }
}

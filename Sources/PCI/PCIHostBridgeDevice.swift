import Synchronization

/// The host bridge at 00:00.0: a header with no BARs, no interrupt pin and no capabilities, so that guests
/// probing bus 0 find a bridge (Linux's type-1 sanity check looks for a host-bridge class there).
///
/// It carries Red Hat's ID for QEMU's generic PCIe host bridge, 1B36:0008, rather than an Intel chipset's:
/// no Linux driver binds to it, so no chipset quirk or AGP/GTT probe runs against a bridge that has none of
/// that hardware, and lspci names it. Its subsystem is 1AF4:1100, as QEMU gives its devices: SeaBIOS reads it to
/// tell that it runs on QEMU's platform and should read fw_cfg.
public final class PCIHostBridgeDevice: PCIDevice {
    /// The bridge's identity registers.
    public static let identity = PCIIdentity(
        vendorID: 0x1B36, deviceID: 0x0008, revision: 0, classCode: .hostBridge, subsystemVendorID: 0x1AF4,
        subsystemID: 0x1100)

    private let space = Mutex(PCIConfigSpace(identity: PCIHostBridgeDevice.identity))

    public init() {}

    public func readConfiguration(offset: Int, width: Int) -> UInt32 {
        space.withLock { $0.read(offset: offset, width: width) }
    }

    public func writeConfiguration(offset: Int, width: Int, value: UInt32) {
        space.withLock { $0.write(offset: offset, width: width, value: value) }
    }

    public func mappedBARs() -> [PCIMappedBAR] { [] }

    public func readBAR(_ index: Int, offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        fillAllOnes(data)
    }

    public func writeBAR(_ index: Int, offset: UInt64, from data: UnsafeRawBufferPointer) {}
}

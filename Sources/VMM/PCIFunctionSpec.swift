import Devices
import PCI

/// A PCI function other than a VirtIO device (the AHCI controller), made once its slot's INTA# line is known.
struct PCIFunctionSpec {
    let name: String
    /// Builds the function given its INTA# source and the GSI that line drives.
    let make: (_ interrupt: any InterruptLine, _ gsi: UInt32) -> any PCIDevice
}

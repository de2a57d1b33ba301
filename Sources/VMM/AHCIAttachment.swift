import AHCI
import GuestMemory
import Logging

extension Machine {
    /// The AHCI controller holding `drives` on ports 0 up, as a PCI function; none without drives.
    static func ahciFunction(_ drives: [DriveConfiguration], memory: GuestMemory, logger: Logger) throws(MachineError) -> [PCIFunctionSpec] {
        guard !drives.isEmpty else { return [] }
        guard drives.count <= AHCIController.portCount else {
            throw MachineError("\(drives.count) AHCI drives exceed the controller's \(AHCIController.portCount) ports")
        }
        return [PCIFunctionSpec(name: "ahci") { interrupt, gsi in
            AHCIController(drives: drives, memory: memory, interrupt: interrupt, interruptLineRegister: UInt8(gsi)) { line in
                logger.warning("\(line)")
            }
        }]
    }
}

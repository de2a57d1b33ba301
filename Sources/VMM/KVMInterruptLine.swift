import Devices
import KVM

/// An interrupt line into KVM's in-kernel PIC and IOAPIC.
struct KVMInterruptLine: InterruptLine {
    let vm: VirtualMachine
    let gsi: UInt32

    func setLevel(_ asserted: Bool) {
        try? vm.setInterruptLine(gsi, level: asserted)
    }
}

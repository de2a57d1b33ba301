import CKVM
import GuestMemory
import KVM
import X86

/// Completes the few instructions a software-virtualisation host's emulator gives up on, when they are simple to do
/// from the VMM: software interrupts (`int3`, `int n`) raised by guest ring 0.
enum InstructionAssist {
    /// Handles an emulation failure at the vCPU's RIP. Returns true when the guest can continue.
    static func handleEmulationFailure(_ vcpu: VCPU, memory: GuestMemory) -> Bool {
        guard var registers = try? vcpu.registers(), let system = try? vcpu.systemRegisters() else { return false }
        let linear = system.cs.base &+ registers.rip
        let physical = system.cr0 & ControlBits.cr0Paging != 0 ? vcpu.translate(linear) : linear
        guard let physical, let opcode = try? memory.load(UInt8.self, at: physical) else { return false }
        let vector: UInt8
        let length: UInt64
        switch opcode {
        case 0xCC:  // int3: a trap, so the handler sees RIP after the instruction
            vector = 3
            length = 1
        case 0xCD:  // int imm8
            guard let immediate = (physical & 0xFFF) < 0xFFF
                ? try? memory.load(UInt8.self, at: physical + 1)
                : vcpu.translate(linear + 1).flatMap({ try? memory.load(UInt8.self, at: $0) }) else { return false }
            vector = immediate
            length = 2
        default:
            return false
        }
        registers.rip &+= length
        do {
            try vcpu.setRegisters(registers)
            try vcpu.injectException(vector: vector)
        } catch {
            return false
        }
        return true
    }
}

import CKVM
import GuestMemory
import KVM
import X86

/// Renders what a vCPU was doing when the guest broke: exit reason, registers, CPU mode and the faulting instruction.
enum CrashReport {
    static let instructionWindow = 16

    /// Names an internal-error exit and its suberror.
    static func internalError(suberror: UInt32, data: [UInt64]) -> String {
        let name: String
        switch Int32(suberror) {
        case KVM_INTERNAL_ERROR_EMULATION: name = "emulation failure: KVM could not emulate the instruction"
        case KVM_INTERNAL_ERROR_SIMUL_EX: name = "simultaneous exceptions"
        case KVM_INTERNAL_ERROR_DELIVERY_EV: name = "event delivery failed"
        case KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: name = "unexpected hardware exit reason"
        default: name = "unknown"
        }
        let extra = data.isEmpty ? "" : ", data " + data.map { "0x" + String($0, radix: 16) }.joined(separator: " ")
        return "KVM_EXIT_INTERNAL_ERROR suberror \(suberror) (\(name)\(extra))"
    }

    /// One line describing vCPU `index` stopped by `exit`.
    static func describe(vcpu: VCPU, index: Int, memory: GuestMemory, exit: String) -> String {
        guard let registers = try? vcpu.registers(), let system = try? vcpu.systemRegisters() else {
            return "vCPU \(index) stopped: \(exit); its registers could not be read"
        }
        let mode = cpuMode(system)
        let window = InstructionAssist.instructionBytes(vcpu: vcpu, memory: memory, registers: registers, system: system,
                                                        count: instructionWindow)
        let bytes = window.isEmpty ? "unavailable (RIP is not in guest RAM)"
            : window.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: " ")
        return "vCPU \(index) stopped: \(exit) at RIP 0x\(String(registers.rip, radix: 16)) in \(mode), "
            + "RSP 0x\(String(registers.rsp, radix: 16)), RFLAGS 0x\(String(registers.rflags, radix: 16)), "
            + "CR0 0x\(String(system.cr0, radix: 16)), CR3 0x\(String(system.cr3, radix: 16)), "
            + "CR4 0x\(String(system.cr4, radix: 16)), EFER 0x\(String(system.efer, radix: 16)); instruction bytes: \(bytes)"
    }

    /// The CPU's operating mode and privilege level, e.g. "64-bit long mode, ring 3".
    static func cpuMode(_ system: SystemRegisters) -> String {
        guard system.cr0 & ControlBits.cr0ProtectionEnable != 0 else { return "real mode" }
        let ring = "ring \(system.cs.selector & 3)"
        if system.efer & ControlBits.eferLongModeActive != 0 {
            return system.cs.l ? "64-bit long mode, \(ring)" : "compatibility mode, \(ring)"
        }
        let paging = system.cr0 & ControlBits.cr0Paging != 0 ? " with paging" : ""
        return (system.cs.db ? "32-bit" : "16-bit") + " protected mode\(paging), \(ring)"
    }
}

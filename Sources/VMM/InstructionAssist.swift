import CKVM
import GuestMemory
import KVM
import X86

/// Completes the few instructions a software-virtualisation host's emulator gives up on, when they are simple to do
/// from the VMM, in guest ring 0: software interrupts (`int3`, `int n`), register-to-register `popcnt`, `clac`/`stac`
/// and `fwait`.
enum InstructionAssist {
    /// Longest instruction the assist decodes.
    static let window = 8

    /// Handles an emulation failure at the vCPU's RIP. Returns true when the guest can continue.
    static func handleEmulationFailure(_ vcpu: VCPU, memory: GuestMemory) -> Bool {
        guard var registers = try? vcpu.registers(), let system = try? vcpu.systemRegisters() else { return false }
        let linear = system.cs.base &+ registers.rip
        var bytes = [UInt8](repeating: 0, count: window)
        for index in 0..<window {
            let address = system.cr0 & ControlBits.cr0Paging != 0 ? vcpu.translate(linear &+ UInt64(index)) : linear &+ UInt64(index)
            guard let address, let byte = try? memory.load(UInt8.self, at: address) else { break }
            bytes[index] = byte
        }
        guard let action = decode(bytes, longMode: system.cs.l) else { return false }
        do {
            switch action {
            case .interrupt(let vector, let length):
                registers.rip &+= length
                try vcpu.setRegisters(registers)
                try vcpu.injectException(vector: vector)
            case .populationCount(let destination, let source, let operandBits, let length):
                let value = operandBits == 64 ? registers[encoding: source]
                    : registers[encoding: source] & (operandBits == 32 ? 0xFFFF_FFFF : 0xFFFF)
                let count = UInt64(value.nonzeroBitCount)
                switch operandBits {
                case 16: registers[encoding: destination] = (registers[encoding: destination] & ~0xFFFF) | count
                default: registers[encoding: destination] = count  // 32-bit results zero-extend
                }
                // POPCNT clears OF, SF, AF, CF and PF, and sets ZF when the source is zero.
                registers.rflags = (registers.rflags & ~0x8D5) | (value == 0 ? 0x40 : 0)
                registers.rip &+= length
                try vcpu.setRegisters(registers)
            case .skip(let length):
                registers.rip &+= length
                try vcpu.setRegisters(registers)
            case .setAlignmentCheck(let enabled):
                let flag: UInt64 = 1 << 18
                registers.rflags = enabled ? registers.rflags | flag : registers.rflags & ~flag
                registers.rip &+= 3
                try vcpu.setRegisters(registers)
            }
        } catch {
            return false
        }
        return true
    }

    /// What to do for an instruction.
    enum Action: Equatable {
        /// Deliver `vector` with RIP advanced past the instruction (a trap, as `int3`/`int n` are).
        case interrupt(vector: UInt8, length: UInt64)
        /// `popcnt destination, source` on registers (x86 encodings) of `operandBits` width.
        case populationCount(destination: Int, source: Int, operandBits: Int, length: UInt64)
        /// An instruction with no effect here: `fwait` (Tern never leaves x87 exceptions pending across an exit).
        case skip(length: UInt64)
        /// `stac` (true) or `clac` (false): set or clear RFLAGS.AC, which gates supervisor access to user pages (SMAP).
        case setAlignmentCheck(Bool)
    }

    /// Decodes the instructions the assist handles; nil for anything else.
    static func decode(_ bytes: [UInt8], longMode: Bool) -> Action? {
        guard let first = bytes.first else { return nil }
        if first == 0xCC { return .interrupt(vector: 3, length: 1) }
        if first == 0xCD, bytes.count >= 2 { return .interrupt(vector: bytes[1], length: 2) }
        if first == 0x9B { return .skip(length: 1) }
        if bytes.count >= 3, first == 0x0F, bytes[1] == 0x01, bytes[2] == 0xCA || bytes[2] == 0xCB {
            return .setAlignmentCheck(bytes[2] == 0xCB)
        }
        // popcnt: F3 [66] [REX] 0F B8 /r, register form only.
        var position = 0
        var operandSize = false
        var mandatory = false
        while position < bytes.count, bytes[position] == 0xF3 || bytes[position] == 0x66 {
            if bytes[position] == 0xF3 { mandatory = true } else { operandSize = true }
            position += 1
        }
        var rex: UInt8 = 0
        if longMode, position < bytes.count, bytes[position] & 0xF0 == 0x40 {
            rex = bytes[position]
            position += 1
        }
        guard mandatory, position + 2 < bytes.count, bytes[position] == 0x0F, bytes[position + 1] == 0xB8 else { return nil }
        let modrm = bytes[position + 2]
        guard modrm >> 6 == 3 else { return nil }
        let destination = Int((modrm >> 3) & 7) | (rex & 0x4 != 0 ? 8 : 0)
        let source = Int(modrm & 7) | (rex & 0x1 != 0 ? 8 : 0)
        let bits = rex & 0x8 != 0 ? 64 : operandSize ? 16 : 32
        return .populationCount(destination: destination, source: source, operandBits: bits, length: UInt64(position + 3))
    }
}

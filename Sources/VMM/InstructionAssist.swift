import CKVM
import GuestMemory
import KVM
import X86

/// Completes the few instructions a software-virtualisation host's emulator gives up on, when they are simple to do
/// from the VMM, in guest ring 0: software interrupts (`int3`, `int n`), register-to-register `popcnt`,
/// `clac`/`stac`, `fwait`, and the SSE state instructions `ldmxcsr`, `stmxcsr`, `fxsave` and `fxrstor`.
enum InstructionAssist {
    /// Longest instruction the assist decodes.
    static let window = 15

    /// A memory operand from a ModRM byte (64-bit addressing).
    struct MemoryOperand: Equatable {
        enum Segment: Equatable { case none, fs, gs }
        var base: Int?
        var index: Int?
        var scale: UInt64 = 1
        var displacement: Int64 = 0
        var ripRelative = false
        var segment = Segment.none
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
        /// `fxsave`, `fxrstor`, `ldmxcsr` or `stmxcsr` on a memory operand.
        case floatingPointState(FloatingPointOperation, MemoryOperand, length: UInt64)
    }

    enum FloatingPointOperation: Equatable {
        case save, restore, loadMXCSR, storeMXCSR
    }

    /// Handles an emulation failure at the vCPU's RIP. Returns true when the guest can continue.
    static func handleEmulationFailure(_ vcpu: VCPU, memory: GuestMemory) -> Bool {
        guard var registers = try? vcpu.registers(), let system = try? vcpu.systemRegisters(),
              system.cs.selector & 3 == 0 else { return false }
        let original = registers
        let paging = system.cr0 & ControlBits.cr0Paging != 0
        let bytes = instructionBytes(vcpu: vcpu, memory: memory, registers: registers, system: system, count: window)
        guard let action = decode(bytes, longMode: system.cs.l) else { return false }
        do {
            switch action {
            case .interrupt(let vector, let length):
                // NMI cannot be raised this way; KVM_SET_REGS drops pending events, so registers go first.
                guard vector != 2 else { return false }
                registers.rip &+= length
                try vcpu.setRegisters(registers)
                do {
                    if vector < 32 {
                        try vcpu.injectException(vector: vector)
                    } else {
                        try vcpu.injectSoftwareInterrupt(vector: vector)
                    }
                } catch {
                    try? vcpu.setRegisters(original)
                    return false
                }
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
            case .floatingPointState(let operation, let operand, let length):
                let address = effectiveAddress(operand, registers: registers, system: system, length: length)
                guard try floatingPointState(operation, at: address, vcpu: vcpu, memory: memory, paging: paging) else { return false }
                registers.rip &+= length
                try vcpu.setRegisters(registers)
            }
        } catch {
            return false
        }
        return true
    }

    /// Carries out an SSE state instruction on the guest-linear `address`; false when the operand is not in RAM.
    static func floatingPointState(_ operation: FloatingPointOperation, at address: UInt64, vcpu: VCPU,
                                   memory: GuestMemory, paging: Bool) throws(KVMError) -> Bool {
        switch operation {
        case .save:
            let image = try vcpu.floatingPointImage()
            return write(image, at: address, vcpu: vcpu, memory: memory, paging: paging)
        case .restore:
            guard let image = read(512, at: address, vcpu: vcpu, memory: memory, paging: paging) else { return false }
            try vcpu.restoreFloatingPointImage(image)
        case .storeMXCSR:
            let image = try vcpu.floatingPointImage()
            return write(Array(image[24..<28]), at: address, vcpu: vcpu, memory: memory, paging: paging)
        case .loadMXCSR:
            guard let value = read(4, at: address, vcpu: vcpu, memory: memory, paging: paging) else { return false }
            var image = try vcpu.floatingPointImage()
            image.replaceSubrange(24..<28, with: value)
            try vcpu.restoreFloatingPointImage(image)
        }
        return true
    }

    /// Up to `count` bytes at CS:RIP, translated page by page; fewer when the instruction runs into unmapped memory.
    static func instructionBytes(vcpu: VCPU, memory: GuestMemory, registers: GeneralRegisters, system: SystemRegisters,
                                 count: Int) -> [UInt8] {
        let paging = system.cr0 & ControlBits.cr0Paging != 0
        var address = system.cs.base &+ registers.rip
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        while bytes.count < count {
            let chunk = min(count - bytes.count, Int(4096 - (address & 0xFFF)))
            guard let target = physical(address, vcpu: vcpu, paging: paging),
                  let part = try? memory.bytes(at: target, count: chunk) else { break }
            bytes.append(contentsOf: part)
            address &+= UInt64(chunk)
        }
        return bytes
    }

    static func physical(_ linear: UInt64, vcpu: VCPU, paging: Bool) -> UInt64? {
        paging ? vcpu.translate(linear) : linear
    }

    /// Reads `count` bytes at a guest-linear address, page by page.
    static func read(_ count: Int, at linear: UInt64, vcpu: VCPU, memory: GuestMemory, paging: Bool) -> [UInt8]? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        var address = linear
        while bytes.count < count {
            let chunk = min(count - bytes.count, Int(4096 - (address & 0xFFF)))
            guard let target = physical(address, vcpu: vcpu, paging: paging),
                  let part = try? memory.bytes(at: target, count: chunk) else { return nil }
            bytes.append(contentsOf: part)
            address &+= UInt64(chunk)
        }
        return bytes
    }

    /// Writes `bytes` at a guest-linear address, page by page; checks every page before writing any.
    static func write(_ bytes: [UInt8], at linear: UInt64, vcpu: VCPU, memory: GuestMemory, paging: Bool) -> Bool {
        var pieces: [(physical: UInt64, range: Range<Int>)] = []
        var offset = 0
        while offset < bytes.count {
            let address = linear &+ UInt64(offset)
            let chunk = min(bytes.count - offset, Int(4096 - (address & 0xFFF)))
            guard let target = physical(address, vcpu: vcpu, paging: paging), memory.contains(target, length: UInt64(chunk)) else {
                return false
            }
            pieces.append((target, offset..<offset + chunk))
            offset += chunk
        }
        for piece in pieces {
            try? memory.write(Array(bytes[piece.range]), at: piece.physical)
        }
        return true
    }

    /// The guest-linear address a memory operand names.
    static func effectiveAddress(_ operand: MemoryOperand, registers: GeneralRegisters, system: SystemRegisters, length: UInt64) -> UInt64 {
        var address = UInt64(bitPattern: operand.displacement)
        if operand.ripRelative { address &+= registers.rip &+ length }
        if let base = operand.base { address &+= registers[encoding: base] }
        if let index = operand.index { address &+= registers[encoding: index] &* operand.scale }
        switch operand.segment {
        case .none: break
        case .fs: address &+= system.fs.base
        case .gs: address &+= system.gs.base
        }
        return address
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
        var position = 0
        var operandSize = false
        var repeatPrefix = false
        var segment = MemoryOperand.Segment.none
        prefixes: while position < bytes.count {
            switch bytes[position] {
            case 0xF3: repeatPrefix = true
            case 0x66: operandSize = true
            case 0x64: segment = .fs
            case 0x65: segment = .gs
            default: break prefixes
            }
            position += 1
        }
        var rex: UInt8 = 0
        if longMode, position < bytes.count, bytes[position] & 0xF0 == 0x40 {
            rex = bytes[position]
            position += 1
        }
        guard position + 2 < bytes.count, bytes[position] == 0x0F else { return nil }
        let opcode = bytes[position + 1]
        let modrmPosition = position + 2
        let modrm = bytes[modrmPosition]
        let reg = Int((modrm >> 3) & 7)
        switch opcode {
        case 0xB8 where repeatPrefix:  // popcnt, register form only
            guard modrm >> 6 == 3 else { return nil }
            let destination = reg | (rex & 0x4 != 0 ? 8 : 0)
            let source = Int(modrm & 7) | (rex & 0x1 != 0 ? 8 : 0)
            let bits = rex & 0x8 != 0 ? 64 : operandSize ? 16 : 32
            return .populationCount(destination: destination, source: source, operandBits: bits, length: UInt64(modrmPosition + 1))
        case 0xAE where !repeatPrefix && !operandSize && modrm >> 6 != 3 && reg <= 3 && longMode:
            guard let (operand, end) = memoryOperand(bytes, at: modrmPosition, rex: rex, segment: segment) else { return nil }
            let operation: FloatingPointOperation = [.save, .restore, .loadMXCSR, .storeMXCSR][reg]
            return .floatingPointState(operation, operand, length: UInt64(end))
        default:
            return nil
        }
    }

    /// Decodes the memory operand whose ModRM byte is at `position`; returns it and the offset just past it.
    static func memoryOperand(_ bytes: [UInt8], at position: Int, rex: UInt8, segment: MemoryOperand.Segment) -> (MemoryOperand, Int)? {
        let modrm = bytes[position]
        let mode = modrm >> 6
        var operand = MemoryOperand(segment: segment)
        var next = position + 1
        let rm = Int(modrm & 7)
        if rm == 4 {
            guard next < bytes.count else { return nil }
            let sib = bytes[next]
            next += 1
            operand.scale = 1 << UInt64(sib >> 6)
            let index = Int((sib >> 3) & 7) | (rex & 0x2 != 0 ? 8 : 0)
            if index != 4 { operand.index = index }
            let base = Int(sib & 7)
            if base == 5 && mode == 0 {
                guard next + 4 <= bytes.count else { return nil }
                operand.displacement = Int64(Int32(bitPattern: le32(bytes, next)))
                return (operand, next + 4)
            }
            operand.base = base | (rex & 0x1 != 0 ? 8 : 0)
        } else if rm == 5 && mode == 0 {
            guard next + 4 <= bytes.count else { return nil }
            operand.ripRelative = true
            operand.displacement = Int64(Int32(bitPattern: le32(bytes, next)))
            return (operand, next + 4)
        } else {
            operand.base = rm | (rex & 0x1 != 0 ? 8 : 0)
        }
        switch mode {
        case 1:
            guard next < bytes.count else { return nil }
            operand.displacement = Int64(Int8(bitPattern: bytes[next]))
            next += 1
        case 2:
            guard next + 4 <= bytes.count else { return nil }
            operand.displacement = Int64(Int32(bitPattern: le32(bytes, next)))
            next += 4
        default:
            break
        }
        return (operand, next)
    }

    static func le32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
    }
}

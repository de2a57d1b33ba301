import Testing
@testable import VMM

@Suite struct InstructionAssistTests {
    @Test func decodesSoftwareInterrupts() {
        #expect(InstructionAssist.decode([0xCC, 0, 0], longMode: true) == .interrupt(vector: 3, length: 1))
        #expect(InstructionAssist.decode([0xCD, 0x80, 0], longMode: true) == .interrupt(vector: 0x80, length: 2))
    }

    @Test func decodesRegisterPopcnt() {
        // popcnt rax, rdi
        #expect(InstructionAssist.decode([0xF3, 0x48, 0x0F, 0xB8, 0xC7, 0x41], longMode: true)
                == .populationCount(destination: 0, source: 7, operandBits: 64, length: 5))
        // popcnt r9d, r10d
        #expect(InstructionAssist.decode([0xF3, 0x45, 0x0F, 0xB8, 0xCA], longMode: true)
                == .populationCount(destination: 9, source: 10, operandBits: 32, length: 5))
        // popcnt ax, cx
        #expect(InstructionAssist.decode([0x66, 0xF3, 0x0F, 0xB8, 0xC1], longMode: true)
                == .populationCount(destination: 0, source: 1, operandBits: 16, length: 5))
    }

    @Test func decodesSMAPInstructions() {
        #expect(InstructionAssist.decode([0x0F, 0x01, 0xCA, 0xFC], longMode: true) == .setAlignmentCheck(false))
        #expect(InstructionAssist.decode([0x0F, 0x01, 0xCB, 0x90], longMode: true) == .setAlignmentCheck(true))
    }

    @Test func decodesSSEStateInstructionsWithMemoryOperands() {
        typealias Operand = InstructionAssist.MemoryOperand
        // ldmxcsr [rsp+4]
        #expect(InstructionAssist.decode([0x0F, 0xAE, 0x54, 0x24, 0x04, 0x83], longMode: true)
                == .floatingPointState(.loadMXCSR, Operand(base: 4, displacement: 4), length: 5))
        // stmxcsr [rbp-8]
        #expect(InstructionAssist.decode([0x0F, 0xAE, 0x5D, 0xF8], longMode: true)
                == .floatingPointState(.storeMXCSR, Operand(base: 5, displacement: -8), length: 4))
        // fxsave64 [rdi]
        #expect(InstructionAssist.decode([0x48, 0x0F, 0xAE, 0x07], longMode: true)
                == .floatingPointState(.save, Operand(base: 7), length: 4))
        // fxrstor64 [r12+rax*8+0x100]
        #expect(InstructionAssist.decode([0x49, 0x0F, 0xAE, 0x8C, 0xC4, 0x00, 0x01, 0x00, 0x00], longMode: true)
                == .floatingPointState(.restore, Operand(base: 12, index: 0, scale: 8, displacement: 0x100), length: 9))
        // ldmxcsr [rip+0x10]
        #expect(InstructionAssist.decode([0x0F, 0xAE, 0x15, 0x10, 0x00, 0x00, 0x00], longMode: true)
                == .floatingPointState(.loadMXCSR, Operand(displacement: 0x10, ripRelative: true), length: 7))
        // stmxcsr gs:[0x20] (SIB with no base and no index)
        #expect(InstructionAssist.decode([0x65, 0x0F, 0xAE, 0x1C, 0x25, 0x20, 0x00, 0x00, 0x00], longMode: true)
                == .floatingPointState(.storeMXCSR, Operand(displacement: 0x20, segment: .gs), length: 9))
        // truncated operand
        #expect(InstructionAssist.decode([0x0F, 0xAE, 0x94, 0x24], longMode: true) == nil)
    }

    @Test func leavesEverythingElseAlone() {
        #expect(InstructionAssist.decode([0xF3, 0x48, 0x0F, 0xB8, 0x07], longMode: true) == nil)  // memory operand
        #expect(InstructionAssist.decode([0x48, 0x0F, 0xB8, 0xC7], longMode: true) == nil)  // no F3: jmpe, not popcnt
        #expect(InstructionAssist.decode([0x48, 0x0F, 0xAE, 0x2F], longMode: true) == nil)  // xrstor64
        #expect(InstructionAssist.decode([0x0F, 0xAE, 0xF0], longMode: true) == nil)  // mfence
        #expect(InstructionAssist.decode([0xF3, 0x0F], longMode: true) == nil)
        #expect(InstructionAssist.decode([], longMode: true) == nil)
    }
}

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

    @Test func leavesEverythingElseAlone() {
        #expect(InstructionAssist.decode([0xF3, 0x48, 0x0F, 0xB8, 0x07], longMode: true) == nil)  // memory operand
        #expect(InstructionAssist.decode([0x48, 0x0F, 0xB8, 0xC7], longMode: true) == nil)  // no F3: jmpe, not popcnt
        #expect(InstructionAssist.decode([0x0F, 0xAE, 0x2F], longMode: true) == nil)  // xrstor
        #expect(InstructionAssist.decode([0xF3, 0x0F], longMode: true) == nil)
        #expect(InstructionAssist.decode([], longMode: true) == nil)
    }
}

import Glibc
import KVM
import Testing
import X86

/// A VM with the in-kernel irqchip and PIT, 2 MiB of RAM and one vCPU whose CPUID is what KVM supports.
private struct TestVM {
    let hypervisor: Hypervisor
    let vm: VirtualMachine
    let vcpu: VCPU
    let memory: UnsafeMutableRawPointer

    static let memorySize = 2 << 20

    init(logDirtyPages: Bool = false) throws {
        hypervisor = try Hypervisor()
        vm = try hypervisor.createVM()
        try vm.setTSSAddress(0xFFFB_D000)
        try vm.createInterruptController()
        try vm.createTimer()
        memory = mmap(nil, Self.memorySize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        try vm.setMemorySlot(
            0, guestAddress: 0, size: UInt64(Self.memorySize), host: memory, flags: logDirtyPages ? .logDirtyPages : [])
        vcpu = try vm.createVCPU(id: 0)
        try vcpu.setCPUID(try hypervisor.supportedCPUID())
    }

    func capture() throws -> VCPUState {
        try vcpu.captureState(msrIndices: try hypervisor.saveableMSRs(), extendedStateSize: vm.extendedStateSize)
    }
}

private let kernelGSBase: UInt32 = 0xC000_0102

@Suite(.serialized) struct KVMStateTests {
    @Test func saveableMSRsAreTheListedOnesInRangePlusMTRRs() throws {
        let msrs = try Hypervisor().saveableMSRs()
        #expect(msrs.contains(0x10))  // IA32_TSC
        #expect(msrs.contains(kernelGSBase))
        #expect(msrs.contains(0x2FF))  // MTRRdefType, not listed by KVM
        #expect(!msrs.contains(0x17B))  // IA32_MCG_CTL
        #expect(Set(msrs).count == msrs.count)
    }

    @Test func aVCPUStateMovesToAnotherVMUnchanged() throws {
        let source = try TestVM()
        var registers = GeneralRegisters()
        registers.rax = 0x1122_3344_5566_7788
        registers.r15 = 0xDEAD_BEEF
        registers.rip = 0x1000
        registers.rflags = 0x2
        try source.vcpu.setRegisters(registers)
        try source.vcpu.setMSRs([(kernelGSBase, 0xFFFF_8880_1234_5000)])
        let saved = try source.capture()
        #expect(saved.registers.count == VCPUState.ImageSize.registers)
        #expect(saved.extendedState.count >= VCPUState.ImageSize.minimumExtendedState)
        #expect(saved.msrs.contains(MSRValue(index: kernelGSBase, value: 0xFFFF_8880_1234_5000)))

        let destination = try TestVM()
        try destination.vcpu.restoreState(saved)
        let restored = try destination.capture()
        #expect(try destination.vcpu.registers() == registers)
        #expect(restored.registers == saved.registers)
        #expect(restored.specialRegisters == saved.specialRegisters)
        #expect(restored.extendedControlRegisters == saved.extendedControlRegisters)
        #expect(restored.debugRegisters == saved.debugRegisters)
        #expect(restored.multiprocessingState == saved.multiprocessingState)
        #expect(Array(restored.extendedState.prefix(512)) == Array(saved.extendedState.prefix(512)))
        #expect(restored.msrs.contains(MSRValue(index: kernelGSBase, value: 0xFFFF_8880_1234_5000)))
    }

    @Test func aStateOfTheWrongShapeIsRefusedBeforeAnythingIsLoaded() throws {
        let source = try TestVM()
        var saved = try source.capture()
        saved.localAPIC.removeLast()
        let destination = try TestVM()
        let before = try destination.vcpu.registers()
        #expect(throws: KVMError.stateMismatch("kvm_lapic_state is \(VCPUState.ImageSize.localAPIC - 1) bytes in the saved state and \(VCPUState.ImageSize.localAPIC) bytes for this KVM")) {
            try destination.vcpu.restoreState(saved)
        }
        #expect(try destination.vcpu.registers() == before)
    }

    @Test func theVMStateMovesAndTheClockGoesOnFromWhereItStopped() throws {
        let source = try TestVM()
        let saved = try source.vm.captureState()
        #expect(saved.ioapic.count == VMState.ImageSize.interruptController)
        usleep(200_000)
        let destination = try TestVM()
        try destination.vm.restoreState(saved, clock: .continueFromCapture)
        let restored = try destination.vm.captureState()
        #expect(restored.ioapic == saved.ioapic)
        #expect(restored.primaryPIC == saved.primaryPIC && restored.secondaryPIC == saved.secondaryPIC)
        // The 200 ms between capture and restore are not counted.
        let advanced = restored.clockNanoseconds &- saved.clockNanoseconds
        #expect(restored.clockNanoseconds >= saved.clockNanoseconds && advanced < 100_000_000, "advanced \(advanced) ns")

        let caughtUp = try TestVM()
        try caughtUp.vm.restoreState(saved, clock: .includeElapsedWallTime)
        let counted = try caughtUp.vm.captureState().clockNanoseconds &- saved.clockNanoseconds
        #expect(counted >= 200_000_000, "advanced \(counted) ns")
    }

    @Test func dirtyLogsAreReadAndClearedPerSlot() throws {
        let machine = try TestVM(logDirtyPages: true)
        let pages = TestVM.memorySize / 4096
        var bitmap = [UInt64](repeating: .max, count: pages / 64)
        try bitmap.withUnsafeMutableBytes { try machine.vm.fetchDirtyLog(slot: 0, into: $0) }
        #expect(bitmap.allSatisfy { $0 == 0 }, "no guest has run, so no page is dirty")
        #expect(throws: KVMError.self) {
            try bitmap.withUnsafeMutableBytes { try machine.vm.fetchDirtyLog(slot: 7, into: $0) }
        }
    }
}

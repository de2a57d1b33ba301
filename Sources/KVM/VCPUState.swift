import CKVM
import Glibc

/// A model-specific register and its value.
public struct MSRValue: Sendable, Equatable {
    public var index: UInt32
    public var value: UInt64

    public init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }
}

/// Everything KVM keeps for one vCPU. Each image holds one of the kernel's own structures byte for byte
/// (`kvm_regs`, `kvm_sregs`, `kvm_xsave`, `kvm_xcrs`, `kvm_debugregs`, `kvm_lapic_state`, `kvm_vcpu_events`): their
/// layouts are KVM's stable ABI, and keeping them whole loses no field a newer kernel adds inside their padding.
public struct VCPUState: Sendable, Equatable {
    /// KVM_MP_STATE_*: runnable, halted, waiting for INIT/SIPI.
    public var multiprocessingState: UInt32
    public var registers: [UInt8]
    public var specialRegisters: [UInt8]
    /// The XSAVE area, as long as KVM_CAP_XSAVE2 says (at least 4096 bytes).
    public var extendedState: [UInt8]
    public var extendedControlRegisters: [UInt8]
    public var debugRegisters: [UInt8]
    public var localAPIC: [UInt8]
    public var msrs: [MSRValue]
    public var events: [UInt8]
    /// The guest's TSC frequency in kHz.
    public var tscKHz: UInt32

    public init(
        multiprocessingState: UInt32, registers: [UInt8], specialRegisters: [UInt8], extendedState: [UInt8],
        extendedControlRegisters: [UInt8], debugRegisters: [UInt8], localAPIC: [UInt8], msrs: [MSRValue],
        events: [UInt8], tscKHz: UInt32
    ) {
        self.multiprocessingState = multiprocessingState
        self.registers = registers
        self.specialRegisters = specialRegisters
        self.extendedState = extendedState
        self.extendedControlRegisters = extendedControlRegisters
        self.debugRegisters = debugRegisters
        self.localAPIC = localAPIC
        self.msrs = msrs
        self.events = events
        self.tscKHz = tscKHz
    }

    /// The sizes of the fixed kernel structures, which a restored image must match exactly.
    public enum ImageSize {
        public static let registers = MemoryLayout<kvm_regs>.size
        public static let specialRegisters = MemoryLayout<kvm_sregs>.size
        public static let extendedControlRegisters = MemoryLayout<kvm_xcrs>.size
        public static let debugRegisters = MemoryLayout<kvm_debugregs>.size
        public static let localAPIC = MemoryLayout<kvm_lapic_state>.size
        public static let events = MemoryLayout<kvm_vcpu_events>.size
        /// The legacy XSAVE area; KVM_CAP_XSAVE2 may report more.
        public static let minimumExtendedState = MemoryLayout<kvm_xsave>.size
    }
}

/// The TSC deadline MSR: restored after IA32_TSC, since KVM compares it with the TSC when it is written.
let tscDeadlineMSR: UInt32 = 0x6E0
/// Two TSC frequencies closer than this (parts per million) count as equal, as QEMU and Firecracker treat them.
let tscToleranceppm: UInt64 = 250

extension VCPU {
    /// Captures the vCPU's whole state. Call on the vCPU's own thread while it is out of KVM_RUN, with every other
    /// vCPU of the VM out of KVM_RUN too. `msrIndices` are the MSRs to save (`Hypervisor.saveableMSRs()`);
    /// `extendedStateSize` is `Hypervisor.extendedStateSize`.
    public func captureState(msrIndices: [UInt32], extendedStateSize: Int) throws(KVMError) -> VCPUState {
        // MP state first: reading it lets KVM accept pending INIT/SIPI events, which may change the registers.
        var multiprocessing = kvm_mp_state()
        try ioctlStruct(descriptor.raw, ckvm_KVM_GET_MP_STATE(), &multiprocessing, "KVM_GET_MP_STATE")
        let registers = try ioctlImage(descriptor.raw, ckvm_KVM_GET_REGS(), of: kvm_regs.self, "KVM_GET_REGS")
        let special = try ioctlImage(descriptor.raw, ckvm_KVM_GET_SREGS(), of: kvm_sregs.self, "KVM_GET_SREGS")
        var extended = [UInt8](repeating: 0, count: max(extendedStateSize, VCPUState.ImageSize.minimumExtendedState))
        let large = extendedStateSize > VCPUState.ImageSize.minimumExtendedState
        let read = extended.withUnsafeMutableBytes {
            retryingIoctl(descriptor.raw, large ? ckvm_KVM_GET_XSAVE2() : ckvm_KVM_GET_XSAVE(), $0.baseAddress!)
        }
        if read < 0 { throw .ioctlFailed(large ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE", errno: errno) }
        let xcrs = try ioctlImage(descriptor.raw, ckvm_KVM_GET_XCRS(), of: kvm_xcrs.self, "KVM_GET_XCRS")
        let debug = try ioctlImage(descriptor.raw, ckvm_KVM_GET_DEBUGREGS(), of: kvm_debugregs.self, "KVM_GET_DEBUGREGS")
        let apic = try ioctlImage(descriptor.raw, ckvm_KVM_GET_LAPIC(), of: kvm_lapic_state.self, "KVM_GET_LAPIC")
        let tscKHz = try ioctlValue(descriptor.raw, ckvm_KVM_GET_TSC_KHZ(), 0, "KVM_GET_TSC_KHZ")
        let msrs = try readMSRs(msrIndices)
        // Events last: the ioctls above must not leave an exception or interrupt pending that this misses.
        let events = try ioctlImage(descriptor.raw, ckvm_KVM_GET_VCPU_EVENTS(), of: kvm_vcpu_events.self, "KVM_GET_VCPU_EVENTS")
        return VCPUState(
            multiprocessingState: multiprocessing.mp_state, registers: registers, specialRegisters: special,
            extendedState: extended, extendedControlRegisters: xcrs, debugRegisters: debug, localAPIC: apic,
            msrs: msrs, events: events, tscKHz: UInt32(tscKHz))
    }

    /// Loads `state` into this vCPU, whose CPUID must already be set. Call on the vCPU's own thread before it
    /// runs. The order is what KVM needs: special registers before the LAPIC (the APIC base), the LAPIC before
    /// the MSRs (the TSC deadline timer), the TSC before its deadline, and events last (setting the registers
    /// clears pending exceptions).
    public func restoreState(_ state: VCPUState) throws(KVMError) {
        try Self.checkImage(state.registers, VCPUState.ImageSize.registers, "kvm_regs")
        try Self.checkImage(state.specialRegisters, VCPUState.ImageSize.specialRegisters, "kvm_sregs")
        try Self.checkImage(state.extendedControlRegisters, VCPUState.ImageSize.extendedControlRegisters, "kvm_xcrs")
        try Self.checkImage(state.debugRegisters, VCPUState.ImageSize.debugRegisters, "kvm_debugregs")
        try Self.checkImage(state.localAPIC, VCPUState.ImageSize.localAPIC, "kvm_lapic_state")
        try Self.checkImage(state.events, VCPUState.ImageSize.events, "kvm_vcpu_events")
        guard state.extendedState.count >= VCPUState.ImageSize.minimumExtendedState else {
            throw .stateMismatch("an XSAVE area of \(state.extendedState.count) bytes is shorter than KVM's \(VCPUState.ImageSize.minimumExtendedState)")
        }
        try matchTSCFrequency(state.tscKHz)
        var multiprocessing = kvm_mp_state(mp_state: state.multiprocessingState)
        try ioctlStruct(descriptor.raw, ckvm_KVM_SET_MP_STATE(), &multiprocessing, "KVM_SET_MP_STATE")
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_REGS(), state.registers, "KVM_SET_REGS")
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_SREGS(), state.specialRegisters, "KVM_SET_SREGS")
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_XSAVE(), state.extendedState, "KVM_SET_XSAVE")
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_XCRS(), state.extendedControlRegisters, "KVM_SET_XCRS")
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_DEBUGREGS(), state.debugRegisters, "KVM_SET_DEBUGREGS")
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_LAPIC(), state.localAPIC, "KVM_SET_LAPIC")
        try setMSRs(state.msrs.filter { $0.index != tscDeadlineMSR }.map { ($0.index, $0.value) })
        try setMSRs(state.msrs.filter { $0.index == tscDeadlineMSR }.map { ($0.index, $0.value) })
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_VCPU_EVENTS(), state.events, "KVM_SET_VCPU_EVENTS")
    }

    /// Tells the guest's kvmclock that the vCPU was stopped, so that its watchdogs do not count the pause as a
    /// lockup. KVM refuses this (EINVAL) before the guest has set up kvmclock, which is harmless.
    public func noteClockPaused() throws(KVMError) {
        if ioctl(descriptor.raw, ckvm_KVM_KVMCLOCK_CTRL(), 0) < 0 && errno != EINVAL {
            throw .ioctlFailed("KVM_KVMCLOCK_CTRL", errno: errno)
        }
    }

    /// Reads `indices`, skipping any KVM refuses (GET_MSRS stops at the first one it cannot read).
    func readMSRs(_ indices: [UInt32]) throws(KVMError) -> [MSRValue] {
        var values: [MSRValue] = []
        var remaining = indices[...]
        while !remaining.isEmpty {
            let batch = Array(remaining)
            guard let buffer = ckvm_msrs_alloc(UInt32(batch.count)) else { throw .ioctlFailed("KVM_GET_MSRS", errno: ENOMEM) }
            defer { free(buffer) }
            let slots = ckvm_msrs_entries(buffer)!
            for (position, index) in batch.enumerated() { slots[position].index = index }
            let read = Int(try ioctlPointer(descriptor.raw, ckvm_KVM_GET_MSRS(), UnsafeMutableRawPointer(buffer), "KVM_GET_MSRS"))
            for position in 0..<read { values.append(MSRValue(index: slots[position].index, value: slots[position].data)) }
            remaining = remaining.dropFirst(read + 1)
        }
        return values
    }

    /// Sets the guest TSC frequency to `kilohertz` when it differs from this vCPU's by more than the tolerance.
    func matchTSCFrequency(_ kilohertz: UInt32) throws(KVMError) {
        let current = UInt64(try ioctlValue(descriptor.raw, ckvm_KVM_GET_TSC_KHZ(), 0, "KVM_GET_TSC_KHZ"))
        let saved = UInt64(kilohertz)
        let difference = current > saved ? current - saved : saved - current
        guard difference * 1_000_000 > tscToleranceppm * max(current, 1) else { return }
        if ioctl(descriptor.raw, ckvm_KVM_SET_TSC_KHZ(), Int32(bitPattern: kilohertz)) < 0 {
            throw .stateMismatch("the guest's TSC runs at \(kilohertz) kHz, this host's at \(current) kHz, and KVM cannot scale it (\(String(cString: strerror(errno))))")
        }
    }

    private static func checkImage(_ image: [UInt8], _ size: Int, _ structure: String) throws(KVMError) {
        guard image.count == size else {
            throw .stateMismatch("\(structure) is \(image.count) bytes in the saved state and \(size) bytes for this KVM")
        }
    }
}

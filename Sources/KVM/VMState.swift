import CKVM
import Glibc

/// The VM-wide state KVM keeps: the in-kernel PICs and IOAPIC, the PIT, and the kvmclock. Each image is the
/// kernel's own structure byte for byte (`kvm_irqchip`, `kvm_pit_state2`, `kvm_clock_data`).
public struct VMState: Sendable, Equatable {
    public var primaryPIC: [UInt8]
    public var secondaryPIC: [UInt8]
    public var ioapic: [UInt8]
    public var timer: [UInt8]
    public var clock: [UInt8]

    public init(primaryPIC: [UInt8], secondaryPIC: [UInt8], ioapic: [UInt8], timer: [UInt8], clock: [UInt8]) {
        self.primaryPIC = primaryPIC
        self.secondaryPIC = secondaryPIC
        self.ioapic = ioapic
        self.timer = timer
        self.clock = clock
    }

    public enum ImageSize {
        public static let interruptController = MemoryLayout<kvm_irqchip>.size
        public static let timer = MemoryLayout<kvm_pit_state2>.size
        public static let clock = MemoryLayout<kvm_clock_data>.size
    }

    /// The guest's kvmclock in nanoseconds when the state was captured.
    public var clockNanoseconds: UInt64 {
        clock.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self) }
    }

    /// The host's CLOCK_REALTIME in nanoseconds when the state was captured.
    public var capturedAtNanoseconds: UInt64 {
        clock.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self) }
    }
}

/// How a restored kvmclock relates to the time that passed while the VM was not running.
public enum ClockRestore: Sendable {
    /// The guest's clock goes on from where it stopped: the time away is invisible to it.
    case continueFromCapture
    /// The guest's clock also counts the wall-clock time since the capture, as after a short migration pause, so
    /// that it stays in step with the world (what KVM_CLOCK_REALTIME does where the host's clock allows it).
    case includeElapsedWallTime
}

/// The host's CLOCK_REALTIME in nanoseconds.
func realtimeNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

extension VirtualMachine {
    /// The size of a vCPU's XSAVE area, as KVM_CAP_XSAVE2 reports it on this VM (at least 4096 bytes).
    public var extendedStateSize: Int {
        max(Int(ioctl(descriptor.raw, ckvm_KVM_CHECK_EXTENSION(), KVM_CAP_XSAVE2)), VCPUState.ImageSize.minimumExtendedState)
    }

    /// Captures the in-kernel interrupt controllers, the PIT and the kvmclock. Every vCPU must be out of KVM_RUN.
    public func captureState() throws(KVMError) -> VMState {
        let timer = try ioctlImage(descriptor.raw, ckvm_KVM_GET_PIT2(), of: kvm_pit_state2.self, "KVM_GET_PIT2")
        var clock = try ioctlImage(descriptor.raw, ckvm_KVM_GET_CLOCK(), of: kvm_clock_data.self, "KVM_GET_CLOCK")
        // KVM fills `realtime` only on hosts with a stable master clock; Tern records it itself on every host, and
        // applies the elapsed time itself on restore.
        let now = realtimeNanoseconds()
        clock.withUnsafeMutableBytes { $0.storeBytes(of: now, toByteOffset: 16, as: UInt64.self) }
        return VMState(
            primaryPIC: try interruptController(UInt32(KVM_IRQCHIP_PIC_MASTER)),
            secondaryPIC: try interruptController(UInt32(KVM_IRQCHIP_PIC_SLAVE)),
            ioapic: try interruptController(UInt32(KVM_IRQCHIP_IOAPIC)), timer: timer, clock: clock)
    }

    /// Loads `state`, after every vCPU's own state and before any vCPU runs.
    public func restoreState(_ state: VMState, clock mode: ClockRestore = .continueFromCapture) throws(KVMError) {
        for (image, name) in [(state.primaryPIC, "primary PIC"), (state.secondaryPIC, "secondary PIC"), (state.ioapic, "IOAPIC")]
        where image.count != VMState.ImageSize.interruptController {
            throw .stateMismatch("the \(name) state is \(image.count) bytes, KVM's kvm_irqchip \(VMState.ImageSize.interruptController)")
        }
        guard state.timer.count == VMState.ImageSize.timer else {
            throw .stateMismatch("the PIT state is \(state.timer.count) bytes, KVM's kvm_pit_state2 \(VMState.ImageSize.timer)")
        }
        guard state.clock.count == VMState.ImageSize.clock else {
            throw .stateMismatch("the clock state is \(state.clock.count) bytes, KVM's kvm_clock_data \(VMState.ImageSize.clock)")
        }
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_PIT2(), state.timer, "KVM_SET_PIT2")
        var clock = [UInt8](repeating: 0, count: VMState.ImageSize.clock)
        var value = state.clockNanoseconds
        if mode == .includeElapsedWallTime {
            let now = realtimeNanoseconds()
            if now > state.capturedAtNanoseconds { value &+= now - state.capturedAtNanoseconds }
        }
        clock.withUnsafeMutableBytes { $0.storeBytes(of: value, toByteOffset: 0, as: UInt64.self) }
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_CLOCK(), clock, "KVM_SET_CLOCK")
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_IRQCHIP(), state.primaryPIC, "KVM_SET_IRQCHIP (primary PIC)")
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_IRQCHIP(), state.secondaryPIC, "KVM_SET_IRQCHIP (secondary PIC)")
        try ioctlLoad(descriptor.raw, ckvm_KVM_SET_IRQCHIP(), state.ioapic, "KVM_SET_IRQCHIP (IOAPIC)")
    }

    private func interruptController(_ chip: UInt32) throws(KVMError) -> [UInt8] {
        var chipState = kvm_irqchip()
        chipState.chip_id = chip
        try ioctlStruct(descriptor.raw, ckvm_KVM_GET_IRQCHIP(), &chipState, "KVM_GET_IRQCHIP")
        return withUnsafeBytes(of: chipState) { Array($0) }
    }
}

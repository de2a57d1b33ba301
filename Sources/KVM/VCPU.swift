import CKVM
import Glibc
import Synchronization
import X86

/// Why KVM_RUN returned. Data pointers point into the vCPU's run area and are valid until the next `run()`.
public enum VCPUExit {
    /// The guest read `count` items of `size` bytes from I/O port `port`; fill `data` before the next run.
    case portIn(port: UInt16, size: Int, count: Int, data: UnsafeMutableRawPointer)
    /// The guest wrote `count` items of `size` bytes from `data` to I/O port `port`.
    case portOut(port: UInt16, size: Int, count: Int, data: UnsafeMutableRawPointer)
    /// The guest read `length` bytes at an unbacked guest-physical address; fill `data` before the next run.
    case mmioRead(address: UInt64, length: Int, data: UnsafeMutableRawPointer)
    /// The guest wrote `length` bytes from `data` to an unbacked guest-physical address.
    case mmioWrite(address: UInt64, length: Int, data: UnsafeMutableRawPointer)
    /// The vCPU executed HLT with no in-kernel LAPIC to handle it.
    case halt
    /// The guest triple-faulted or otherwise asked for a shutdown.
    case shutdown
    /// KVM_RUN was interrupted by a kick (a signal or `immediate_exit`).
    case interrupted
    /// A system event (KVM_SYSTEM_EVENT_SHUTDOWN, _RESET, _CRASH).
    case systemEvent(type: UInt32)
    /// KVM could not handle the guest's operation, e.g. an instruction its emulator does not know.
    case internalError(suberror: UInt32, data: [UInt64])
    /// Entering the guest failed with a hardware reason code.
    case failedEntry(reason: UInt64, cpu: UInt32)
    /// Any other exit reason.
    case other(reason: UInt32)
}

/// A virtual CPU. Create it and use it on one thread only; `kicker` may be used from any thread.
public final class VCPU {
    /// The vCPU index, also its APIC ID.
    public let id: UInt32
    let descriptor: Descriptor
    let runArea: UnsafeMutablePointer<kvm_run>
    let mapSize: Int

    init(id: UInt32, descriptor: consuming Descriptor, mapSize: Int) throws(KVMError) {
        let mapping = mmap(nil, mapSize, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor.raw, 0)
        guard let mapping, mapping != MAP_FAILED else { throw .mapFailed(errno: errno) }
        self.id = id
        self.descriptor = descriptor
        self.mapSize = mapSize
        runArea = mapping.bindMemory(to: kvm_run.self, capacity: 1)
    }

    deinit {
        munmap(runArea, mapSize)
    }

    /// A handle other threads use to make this vCPU's KVM_RUN return promptly.
    public var kicker: VCPUKicker {
        VCPUKicker(immediateExit: UnsafeMutableRawPointer(runArea).advanced(by: MemoryLayout<kvm_run>.offset(of: \kvm_run.immediate_exit)!), thread: pthread_self())
    }

    /// Runs the guest until it needs the VMM.
    public func run() throws(KVMError) -> VCPUExit {
        if ioctl(descriptor.raw, ckvm_KVM_RUN(), 0) < 0 {
            let error = errno
            if error == EINTR || error == EAGAIN {
                runArea.pointee.immediate_exit = 0
                return .interrupted
            }
            throw .ioctlFailed("KVM_RUN", errno: error)
        }
        let raw = UnsafeMutableRawPointer(runArea)
        switch Int32(runArea.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = runArea.pointee.io
            let data = raw.advanced(by: Int(io.data_offset))
            if io.direction == UInt8(KVM_EXIT_IO_OUT) {
                return .portOut(port: io.port, size: Int(io.size), count: Int(io.count), data: data)
            }
            return .portIn(port: io.port, size: Int(io.size), count: Int(io.count), data: data)
        case KVM_EXIT_MMIO:
            let address = runArea.pointee.mmio.phys_addr
            let length = Int(min(runArea.pointee.mmio.len, 8))
            let data = raw.advanced(by: ckvm_mmio_data_offset())
            return runArea.pointee.mmio.is_write != 0
                ? .mmioWrite(address: address, length: length, data: data)
                : .mmioRead(address: address, length: length, data: data)
        case KVM_EXIT_HLT:
            return .halt
        case KVM_EXIT_SHUTDOWN:
            return .shutdown
        case KVM_EXIT_INTR:
            return .interrupted
        case KVM_EXIT_SYSTEM_EVENT:
            return .systemEvent(type: runArea.pointee.system_event.type)
        case KVM_EXIT_INTERNAL_ERROR:
            let failure = runArea.pointee.`internal`
            let count = min(Int(failure.ndata), 16)
            let data = withUnsafeBytes(of: failure.data) { Array($0.bindMemory(to: UInt64.self).prefix(count)) }
            return .internalError(suberror: failure.suberror, data: data)
        case KVM_EXIT_FAIL_ENTRY:
            let failure = runArea.pointee.fail_entry
            return .failedEntry(reason: failure.hardware_entry_failure_reason, cpu: failure.cpu)
        default:
            return .other(reason: runArea.pointee.exit_reason)
        }
    }

    // MARK: Registers

    /// The general-purpose registers.
    public func registers() throws(KVMError) -> GeneralRegisters {
        var raw = kvm_regs()
        try ioctlStruct(descriptor.raw, ckvm_KVM_GET_REGS(), &raw, "KVM_GET_REGS")
        var registers = GeneralRegisters()
        registers.rax = raw.rax; registers.rbx = raw.rbx; registers.rcx = raw.rcx; registers.rdx = raw.rdx
        registers.rsi = raw.rsi; registers.rdi = raw.rdi; registers.rsp = raw.rsp; registers.rbp = raw.rbp
        registers.r8 = raw.r8; registers.r9 = raw.r9; registers.r10 = raw.r10; registers.r11 = raw.r11
        registers.r12 = raw.r12; registers.r13 = raw.r13; registers.r14 = raw.r14; registers.r15 = raw.r15
        registers.rip = raw.rip; registers.rflags = raw.rflags
        return registers
    }

    /// Sets the general-purpose registers.
    public func setRegisters(_ registers: GeneralRegisters) throws(KVMError) {
        var raw = kvm_regs(
            rax: registers.rax, rbx: registers.rbx, rcx: registers.rcx, rdx: registers.rdx,
            rsi: registers.rsi, rdi: registers.rdi, rsp: registers.rsp, rbp: registers.rbp,
            r8: registers.r8, r9: registers.r9, r10: registers.r10, r11: registers.r11,
            r12: registers.r12, r13: registers.r13, r14: registers.r14, r15: registers.r15,
            rip: registers.rip, rflags: registers.rflags)
        try ioctlStruct(descriptor.raw, ckvm_KVM_SET_REGS(), &raw, "KVM_SET_REGS")
    }

    /// The segment, descriptor-table and control registers.
    public func systemRegisters() throws(KVMError) -> SystemRegisters {
        var raw = kvm_sregs()
        try ioctlStruct(descriptor.raw, ckvm_KVM_GET_SREGS(), &raw, "KVM_GET_SREGS")
        var registers = SystemRegisters()
        registers.cs = SegmentRegister(raw.cs); registers.ds = SegmentRegister(raw.ds)
        registers.es = SegmentRegister(raw.es); registers.fs = SegmentRegister(raw.fs)
        registers.gs = SegmentRegister(raw.gs); registers.ss = SegmentRegister(raw.ss)
        registers.tr = SegmentRegister(raw.tr)
        registers.gdt = TableRegister(base: raw.gdt.base, limit: raw.gdt.limit)
        registers.idt = TableRegister(base: raw.idt.base, limit: raw.idt.limit)
        registers.cr0 = raw.cr0; registers.cr3 = raw.cr3; registers.cr4 = raw.cr4; registers.efer = raw.efer
        return registers
    }

    /// Sets the segment, descriptor-table and control registers, keeping the others (APIC base, CR2, CR8) as KVM has them.
    public func setSystemRegisters(_ registers: SystemRegisters) throws(KVMError) {
        var raw = kvm_sregs()
        try ioctlStruct(descriptor.raw, ckvm_KVM_GET_SREGS(), &raw, "KVM_GET_SREGS")
        raw.cs = registers.cs.kvm; raw.ds = registers.ds.kvm; raw.es = registers.es.kvm
        raw.fs = registers.fs.kvm; raw.gs = registers.gs.kvm; raw.ss = registers.ss.kvm
        raw.tr = registers.tr.kvm
        raw.gdt = kvm_dtable(base: registers.gdt.base, limit: registers.gdt.limit, padding: (0, 0, 0))
        raw.idt = kvm_dtable(base: registers.idt.base, limit: registers.idt.limit, padding: (0, 0, 0))
        raw.cr0 = registers.cr0; raw.cr3 = registers.cr3; raw.cr4 = registers.cr4; raw.efer = registers.efer
        try ioctlStruct(descriptor.raw, ckvm_KVM_SET_SREGS(), &raw, "KVM_SET_SREGS")
    }

    /// Resets the x87 and SSE state to their power-on values.
    public func resetFloatingPoint() throws(KVMError) {
        var fpu = kvm_fpu()
        fpu.fcw = 0x37F
        fpu.mxcsr = 0x1F80
        try ioctlStruct(descriptor.raw, ckvm_KVM_SET_FPU(), &fpu, "KVM_SET_FPU")
    }

    /// The x87/SSE state in the 512-byte FXSAVE64 layout (FCW, FSW, abridged FTW, FOP, FIP, FDP, MXCSR, ST0–7, XMM0–15).
    public func floatingPointImage() throws(KVMError) -> [UInt8] {
        var fpu = kvm_fpu()
        try ioctlStruct(descriptor.raw, ckvm_KVM_GET_FPU(), &fpu, "KVM_GET_FPU")
        var image = [UInt8](repeating: 0, count: 512)
        image.withUnsafeMutableBytes { area in
            area.storeBytes(of: fpu.fcw.littleEndian, toByteOffset: 0, as: UInt16.self)
            area.storeBytes(of: fpu.fsw.littleEndian, toByteOffset: 2, as: UInt16.self)
            area.storeBytes(of: fpu.ftwx, toByteOffset: 4, as: UInt8.self)
            area.storeBytes(of: fpu.last_opcode.littleEndian, toByteOffset: 6, as: UInt16.self)
            area.storeBytes(of: fpu.last_ip.littleEndian, toByteOffset: 8, as: UInt64.self)
            area.storeBytes(of: fpu.last_dp.littleEndian, toByteOffset: 16, as: UInt64.self)
            area.storeBytes(of: fpu.mxcsr.littleEndian, toByteOffset: 24, as: UInt32.self)
            area.storeBytes(of: Self.mxcsrMask.littleEndian, toByteOffset: 28, as: UInt32.self)
            withUnsafeBytes(of: fpu.fpr) { area.baseAddress!.advanced(by: 32).copyMemory(from: $0.baseAddress!, byteCount: 128) }
            withUnsafeBytes(of: fpu.xmm) { area.baseAddress!.advanced(by: 160).copyMemory(from: $0.baseAddress!, byteCount: 256) }
        }
        return image
    }

    /// Loads x87/SSE state from a 512-byte FXSAVE64 image, as FXRSTOR does.
    public func restoreFloatingPointImage(_ image: [UInt8]) throws(KVMError) {
        precondition(image.count >= 512, "an FXSAVE image is 512 bytes")
        var fpu = kvm_fpu()
        image.withUnsafeBytes { area in
            fpu.fcw = UInt16(littleEndian: area.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
            fpu.fsw = UInt16(littleEndian: area.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            fpu.ftwx = area[4]
            fpu.last_opcode = UInt16(littleEndian: area.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
            fpu.last_ip = UInt64(littleEndian: area.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            fpu.last_dp = UInt64(littleEndian: area.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
            fpu.mxcsr = UInt32(littleEndian: area.loadUnaligned(fromByteOffset: 24, as: UInt32.self)) & Self.mxcsrMask
            withUnsafeMutableBytes(of: &fpu.fpr) { $0.baseAddress!.copyMemory(from: area.baseAddress!.advanced(by: 32), byteCount: 128) }
            withUnsafeMutableBytes(of: &fpu.xmm) { $0.baseAddress!.copyMemory(from: area.baseAddress!.advanced(by: 160), byteCount: 256) }
        }
        try ioctlStruct(descriptor.raw, ckvm_KVM_SET_FPU(), &fpu, "KVM_SET_FPU")
    }

    /// MXCSR bits the vCPU implements (DAZ included), as FXSAVE reports in MXCSR_MASK.
    public static let mxcsrMask: UInt32 = 0xFFFF

    /// Sets the CPUID this vCPU reports.
    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        guard let buffer = ckvm_cpuid2_alloc(UInt32(entries.count)) else { throw .ioctlFailed("KVM_SET_CPUID2", errno: ENOMEM) }
        defer { free(buffer) }
        let slots = ckvm_cpuid2_entries(buffer)!
        for (index, entry) in entries.enumerated() {
            slots[index].function = entry.function
            slots[index].index = entry.index
            slots[index].flags = entry.flags
            slots[index].eax = entry.eax
            slots[index].ebx = entry.ebx
            slots[index].ecx = entry.ecx
            slots[index].edx = entry.edx
        }
        _ = try ioctlPointer(descriptor.raw, ckvm_KVM_SET_CPUID2(), UnsafeMutableRawPointer(buffer), "KVM_SET_CPUID2")
    }

    /// Writes model-specific registers; throws if KVM rejects any of them.
    public func setMSRs(_ values: [(index: UInt32, value: UInt64)]) throws(KVMError) {
        guard let buffer = ckvm_msrs_alloc(UInt32(values.count)) else { throw .ioctlFailed("KVM_SET_MSRS", errno: ENOMEM) }
        defer { free(buffer) }
        let slots = ckvm_msrs_entries(buffer)!
        for (position, msr) in values.enumerated() {
            slots[position].index = msr.index
            slots[position].data = msr.value
        }
        let written = try ioctlPointer(descriptor.raw, ckvm_KVM_SET_MSRS(), UnsafeMutableRawPointer(buffer), "KVM_SET_MSRS")
        if Int(written) != values.count {
            throw .ioctlFailed("KVM_SET_MSRS (MSR \(String(values[Int(written)].index, radix: 16)))", errno: EINVAL)
        }
    }

    /// Delivers exception `vector` (without an error code) to the guest when it next runs, as if the CPU raised it.
    public func injectException(vector: UInt8) throws(KVMError) {
        var events = kvm_vcpu_events()
        try ioctlStruct(descriptor.raw, ckvm_KVM_GET_VCPU_EVENTS(), &events, "KVM_GET_VCPU_EVENTS")
        events.exception.injected = 1
        events.exception.nr = vector
        events.exception.has_error_code = 0
        events.exception.error_code = 0
        events.flags = 0
        try ioctlStruct(descriptor.raw, ckvm_KVM_SET_VCPU_EVENTS(), &events, "KVM_SET_VCPU_EVENTS")
    }

    /// Delivers software interrupt `vector` (as `int n` raises it) when the guest next runs; RIP must already point
    /// past the instruction.
    public func injectSoftwareInterrupt(vector: UInt8) throws(KVMError) {
        var events = kvm_vcpu_events()
        try ioctlStruct(descriptor.raw, ckvm_KVM_GET_VCPU_EVENTS(), &events, "KVM_GET_VCPU_EVENTS")
        events.interrupt.injected = 1
        events.interrupt.nr = vector
        events.interrupt.soft = 1
        events.flags = 0
        try ioctlStruct(descriptor.raw, ckvm_KVM_SET_VCPU_EVENTS(), &events, "KVM_SET_VCPU_EVENTS")
    }

    /// Translates a guest-linear address through the vCPU's current page tables; nil when unmapped.
    public func translate(_ linearAddress: UInt64) -> UInt64? {
        var translation = kvm_translation()
        translation.linear_address = linearAddress
        guard (try? ioctlStruct(descriptor.raw, ckvm_KVM_TRANSLATE(), &translation, "KVM_TRANSLATE")) != nil,
              translation.valid != 0 else { return nil }
        return translation.physical_address
    }
}

/// Makes a vCPU leave KVM_RUN: sets `immediate_exit` and signals the vCPU's thread.
public struct VCPUKicker: @unchecked Sendable {
    let immediateExit: UnsafeMutableRawPointer
    let thread: pthread_t

    /// Installs the process-wide no-op handler for the kick signal. Call once before any vCPU runs.
    public static func installSignalHandler() {
        _ = ckvm_install_kick_handler(ckvm_kick_signal())
    }

    /// Asks the vCPU to return from KVM_RUN as `.interrupted` as soon as possible.
    public func kick() {
        immediateExit.storeBytes(of: 1, as: UInt8.self)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        pthread_kill(thread, ckvm_kick_signal())
    }
}

extension SegmentRegister {
    init(_ raw: kvm_segment) {
        self.init(base: raw.base, limit: raw.limit, selector: raw.selector, type: raw.type, present: raw.present != 0,
                  dpl: raw.dpl, db: raw.db != 0, s: raw.s != 0, l: raw.l != 0, g: raw.g != 0)
    }

    var kvm: kvm_segment {
        kvm_segment(base: base, limit: limit, selector: selector, type: type, present: present ? 1 : 0, dpl: dpl,
                    db: db ? 1 : 0, s: s ? 1 : 0, l: l ? 1 : 0, g: g ? 1 : 0, avl: 0, unusable: present ? 0 : 1, padding: 0)
    }
}

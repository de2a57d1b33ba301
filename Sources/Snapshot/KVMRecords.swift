import KVM

extension VCPUState: StateRecord {
    public static let tag = SectionTag("VCPU")
    public static let version: UInt32 = 1
    /// The largest XSAVE area any x86 CPU defines today is under 12 KiB; allow growth, refuse absurd sizes.
    static let maximumExtendedState = 1 << 20
    static let maximumMSRs = 4096

    public func encode(into writer: inout StateWriter) {
        writer.write(multiprocessingState)
        writer.write(tscKHz)
        writer.write(registers)
        writer.write(specialRegisters)
        writer.write(extendedState)
        writer.write(extendedControlRegisters)
        writer.write(debugRegisters)
        writer.write(localAPIC)
        writer.write(events)
        writer.write(UInt64(msrs.count))
        for msr in msrs {
            writer.write(msr.index)
            writer.write(msr.value)
        }
    }

    public static func decode(from reader: inout StateReader, version: UInt32) throws(StateError) -> VCPUState {
        let multiprocessing: UInt32 = try reader.read()
        let tscKHz: UInt32 = try reader.read()
        let registers = try reader.readBytes(limit: 4096)
        let special = try reader.readBytes(limit: 4096)
        let extended = try reader.readBytes(limit: maximumExtendedState)
        let xcrs = try reader.readBytes(limit: 4096)
        let debug = try reader.readBytes(limit: 4096)
        let apic = try reader.readBytes(limit: 4096)
        let events = try reader.readBytes(limit: 4096)
        let count = try reader.readCount(minimumItemSize: 12)
        guard count <= maximumMSRs else { throw .malformed("\(count) MSRs in one vCPU's state") }
        var msrs: [MSRValue] = []
        msrs.reserveCapacity(count)
        for _ in 0..<count { msrs.append(MSRValue(index: try reader.read(), value: try reader.read())) }
        return VCPUState(
            multiprocessingState: multiprocessing, registers: registers, specialRegisters: special,
            extendedState: extended, extendedControlRegisters: xcrs, debugRegisters: debug, localAPIC: apic,
            msrs: msrs, events: events, tscKHz: tscKHz)
    }
}

extension VMState: StateRecord {
    public static let tag = SectionTag("KVMV")
    public static let version: UInt32 = 1

    public func encode(into writer: inout StateWriter) {
        for image in [primaryPIC, secondaryPIC, ioapic, timer, clock] { writer.write(image) }
    }

    public static func decode(from reader: inout StateReader, version: UInt32) throws(StateError) -> VMState {
        VMState(
            primaryPIC: try reader.readBytes(limit: 4096), secondaryPIC: try reader.readBytes(limit: 4096),
            ioapic: try reader.readBytes(limit: 4096), timer: try reader.readBytes(limit: 4096),
            clock: try reader.readBytes(limit: 4096))
    }
}

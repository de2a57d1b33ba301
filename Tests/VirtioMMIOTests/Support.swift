import Devices
import GuestMemory
import TestSupport
import VirtioDevices
import VirtioMMIO

/// Register offsets and status bits, as a driver knows them (VIRTIO 1.2 §4.2.2, §2.1).
enum Reg {
    static let magic: UInt64 = 0x000, version: UInt64 = 0x004, deviceID: UInt64 = 0x008, vendorID: UInt64 = 0x00C
    static let deviceFeatures: UInt64 = 0x010, deviceFeaturesSel: UInt64 = 0x014
    static let driverFeatures: UInt64 = 0x020, driverFeaturesSel: UInt64 = 0x024
    static let queueSel: UInt64 = 0x030, queueNumMax: UInt64 = 0x034, queueNum: UInt64 = 0x038
    static let queueReady: UInt64 = 0x044, queueNotify: UInt64 = 0x050
    static let interruptStatus: UInt64 = 0x060, interruptACK: UInt64 = 0x064, status: UInt64 = 0x070
    static let descLow: UInt64 = 0x080, descHigh: UInt64 = 0x084, driverLow: UInt64 = 0x090
    static let driverHigh: UInt64 = 0x094, deviceLow: UInt64 = 0x0A0, deviceHigh: UInt64 = 0x0A4
    static let configGeneration: UInt64 = 0x0FC, config: UInt64 = 0x100
}

enum Status {
    static let acknowledge: UInt32 = 1, driver: UInt32 = 2, driverOK: UInt32 = 4, featuresOK: UInt32 = 8
    static let needsReset: UInt32 = 64
}

/// A guest that drives an entropy device behind the transport as Linux's virtio_mmio driver does, with a
/// queue of 8 whose rings sit in the first pages of a small guest RAM.
struct Guest {
    static let descriptors: UInt64 = 0x1000
    static let available: UInt64 = 0x2000
    static let used: UInt64 = 0x3000
    static let buffer: UInt64 = 0x4000
    static let pattern: UInt8 = 0x5A

    let memory: GuestMemory
    let line = RecordingLine()
    let transport: VirtioMMIOTransport

    init() throws {
        memory = try GuestMemory(size: GuestMemory.minimumSize)
        transport = VirtioMMIOTransport(device: Entropy(memory: memory, queueSize: 8), memory: memory, interrupt: line)
    }

    func read(_ offset: UInt64) -> UInt32 {
        var value: UInt32 = 0
        withUnsafeMutableBytes(of: &value) { transport.read(offset: offset, into: $0) }
        return UInt32(littleEndian: value)
    }

    func write(_ offset: UInt64, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { transport.write(offset: offset, from: $0) }
    }

    var status: UInt32 { read(Reg.status) }

    func addStatus(_ bits: UInt32) { write(Reg.status, status | bits) }

    /// Reset, ACKNOWLEDGE, DRIVER, then acknowledges the offered features within `mask` and sets FEATURES_OK;
    /// returns whether FEATURES_OK reads back.
    func negotiate(mask: UInt64 = .max) -> Bool {
        write(Reg.status, 0)
        addStatus(Status.acknowledge)
        addStatus(Status.driver)
        write(Reg.deviceFeaturesSel, 1)
        let high = read(Reg.deviceFeatures)
        write(Reg.deviceFeaturesSel, 0)
        let low = read(Reg.deviceFeatures)
        let accepted = (UInt64(high) << 32 | UInt64(low)) & mask
        write(Reg.driverFeaturesSel, 1)
        write(Reg.driverFeatures, UInt32(truncatingIfNeeded: accepted >> 32))
        write(Reg.driverFeaturesSel, 0)
        write(Reg.driverFeatures, UInt32(truncatingIfNeeded: accepted))
        addStatus(Status.featuresOK)
        return status & Status.featuresOK != 0
    }

    /// Programs queue 0 (its size too, unless `size` is nil) and marks it ready.
    func setUpQueue(
        size: UInt32? = 8, descriptors: UInt64 = Guest.descriptors, available: UInt64 = Guest.available,
        used: UInt64 = Guest.used
    ) {
        write(Reg.queueSel, 0)
        if let size { write(Reg.queueNum, size) }
        for (low, address) in [(Reg.descLow, descriptors), (Reg.driverLow, available), (Reg.deviceLow, used)] {
            write(low, UInt32(truncatingIfNeeded: address))
            write(low + 4, UInt32(truncatingIfNeeded: address >> 32))
        }
        write(Reg.queueReady, 1)
    }

    /// The driver's side of queue 0 as `setUpQueue()` lays it out.
    var ring: DriverRing {
        DriverRing(memory: memory, size: 8, descriptorTable: Self.descriptors, availableRing: Self.available, usedRing: Self.used)
    }

    /// Puts descriptor 0 (`length` bytes at `buffer`, with `flags`) in the available ring and notifies queue 0.
    func offer(length: UInt32 = 64, flags: UInt16 = DescriptorFlag.write) throws {
        try memory.write(Array(repeating: Self.pattern, count: Int(length)), at: Self.buffer)
        var ring = ring
        try ring.adoptIndices()
        try ring.setDescriptor(0, address: Self.buffer, length: length, flags: flags)
        try ring.makeAvailable(0)
        write(Reg.queueNotify, 0)
    }

    func usedIndex() throws -> UInt16 { try ring.usedIndex() }

    /// The (id, length) of used-ring slot `slot`.
    func usedElement(_ slot: Int) throws -> (UInt32, UInt32) { try ring.usedElement(slot) }

    /// A whole request from reset: whether 64 random bytes come back through the used ring.
    func completesRequest() throws -> Bool {
        try memory.zero(at: 0, length: 0x4000)
        guard negotiate() else { return false }
        setUpQueue()
        addStatus(Status.driverOK)
        try offer()
        let filled = try memory.bytes(at: Self.buffer, count: 64)
        return try usedIndex() == 1 && usedElement(0) == (0, 64) && filled != Array(repeating: Self.pattern, count: 64)
            && status & Status.needsReset == 0
    }
}

import Devices
import Glibc
import GuestMemory
import PCI
import Synchronization
import TestSupport
import VirtioDevices
import VirtioPCI

/// An MSI-X routing that records what the function asked of it.
final class RecordingRouting: MSIXRouting {
    struct Route: Equatable {
        var address: UInt64
        var data: UInt32
        var enabled: Bool
    }

    private let state = Mutex((routes: [Int: Route](), updates: 0, triggers: [Int]()))

    func update(vector: Int, address: UInt64, data: UInt32, enabled: Bool) {
        state.withLock { state in
            state.routes[vector] = Route(address: address, data: data, enabled: enabled)
            state.updates += 1
        }
    }

    func trigger(vector: Int) {
        state.withLock { state in
            precondition(state.routes[vector]?.enabled == true, "vector \(vector) triggered without a route")
            state.triggers.append(vector)
        }
    }

    func route(_ vector: Int) -> Route? { state.withLock { $0.routes[vector] } }
    var updates: Int { state.withLock { $0.updates } }
    /// The vectors triggered since the last call, in order.
    func takeTriggers() -> [Int] { state.withLock { state in defer { state.triggers = [] }; return state.triggers } }
}

/// Offsets and values a driver knows (PCI Local Bus 3.0, VIRTIO 1.2 §4.1.4).
enum Config {
    static let command = 0x04, status = 0x06, bar0 = 0x10, bar1 = 0x14, capabilities = 0x34, interruptPin = 0x3D
    static let memorySpace: UInt32 = 2, busMaster: UInt32 = 4, interruptDisable: UInt32 = 0x400
}

enum Common {
    static let deviceFeatureSelect: UInt64 = 0x00, deviceFeature: UInt64 = 0x04
    static let driverFeatureSelect: UInt64 = 0x08, driverFeature: UInt64 = 0x0C
    static let configVector: UInt64 = 0x10, numQueues: UInt64 = 0x12, status: UInt64 = 0x14, generation: UInt64 = 0x15
    static let queueSelect: UInt64 = 0x16, queueSize: UInt64 = 0x18, queueVector: UInt64 = 0x1A
    static let queueEnable: UInt64 = 0x1C, queueNotifyOff: UInt64 = 0x1E
    static let queueDescriptor: UInt64 = 0x20, queueDriver: UInt64 = 0x28, queueDevice: UInt64 = 0x30
}

enum Status {
    static let acknowledge: UInt8 = 1, driver: UInt8 = 2, driverOK: UInt8 = 4, featuresOK: UInt8 = 8
    static let needsReset: UInt8 = 64
}

/// One virtio capability as a driver reads it from configuration space.
struct VirtioCapability {
    let position: Int
    let type: UInt8
    let bar: UInt8
    let offset: UInt32
    let length: UInt32
}

/// A machine with an entropy device on virtio-pci at 00:01.0, BAR 0 at `barBase`, reached as a guest would:
/// configuration space through the ECAM or ports 0xCF8/0xCFC, the BAR through the 32-bit MMIO window. A queue of 8
/// whose rings sit in the first pages of a small guest RAM, as in the virtio-mmio tests.
struct Machine {
    static let barBase: UInt64 = 0xC000_0000
    static let ecamBase: UInt64 = 0xE000_0000
    static let descriptors: UInt64 = 0x1000
    static let available: UInt64 = 0x2000
    static let used: UInt64 = 0x3000
    static let buffer: UInt64 = 0x4000
    static let pattern: UInt8 = 0x5A
    static let device = PCIAddress(device: 1)

    let memory: GuestMemory
    let line = RecordingLine()
    let routing = RecordingRouting()
    let transport: VirtioPCITransport
    let root: PCIRoot
    let mmio: Bus
    let ports: Bus
    /// Lines the transport sent to its error log.
    let errors = Log<String>()
    /// Every BAR 0 base the transport reported to the VMM.
    let mappings = Log<UInt64?>()

    init(barAddress: UInt64 = Machine.barBase) throws {
        memory = try GuestMemory(size: GuestMemory.minimumSize)
        let errors = errors
        let mappings = mappings
        transport = VirtioPCITransport(
            device: Entropy(memory: memory, queueSize: 8), memory: memory, barAddress: barAddress, interrupt: line,
            interruptLineRegister: 17, msix: routing, onBARChange: { base in mappings.append(base) },
            errorLog: { line in errors.append(line) })
        root = try PCIRoot(devices: [transport])
        var mmio = Bus()
        try mmio.register(PCIMemoryWindow(root: root, base: PCIMemoryMap.mmio32.lowerBound),
                          base: PCIMemoryMap.mmio32.lowerBound, length: UInt64(PCIMemoryMap.mmio32.count))
        try mmio.register(PCIECAM(root: root), base: PCIMemoryMap.ecamBase, length: PCIMemoryMap.ecamSize)
        self.mmio = mmio
        var ports = Bus()
        try ports.register(PCIConfigurationPorts(root: root), base: PCIConfigurationPorts.basePort,
                           length: PCIConfigurationPorts.portCount)
        self.ports = ports
    }

    // MARK: Raw buses

    func readMMIO(_ address: UInt64, width: Int) -> UInt64 {
        var value: UInt64 = 0
        withUnsafeMutableBytes(of: &value) { _ = mmio.read(address, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<width])) }
        return UInt64(littleEndian: value)
    }

    func writeMMIO(_ address: UInt64, width: Int, _ value: UInt64) {
        withUnsafeBytes(of: value.littleEndian) { _ = mmio.write(address, from: UnsafeRawBufferPointer(rebasing: $0[0..<width])) }
    }

    func readPort(_ port: UInt64, width: Int) -> UInt32 {
        var value: UInt32 = 0
        withUnsafeMutableBytes(of: &value) { _ = ports.read(port, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<width])) }
        return UInt32(littleEndian: value)
    }

    func writePort(_ port: UInt64, width: Int, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { _ = ports.write(port, from: UnsafeRawBufferPointer(rebasing: $0[0..<width])) }
    }

    // MARK: Configuration space

    /// Through the ECAM.
    func config(_ offset: Int, width: Int = 4, at function: PCIAddress = Machine.device) -> UInt32 {
        UInt32(readMMIO(Self.ecamAddress(function, offset), width: width))
    }

    func setConfig(_ offset: Int, width: Int = 4, _ value: UInt32, at function: PCIAddress = Machine.device) {
        writeMMIO(Self.ecamAddress(function, offset), width: width, UInt64(value))
    }

    static func ecamAddress(_ function: PCIAddress, _ offset: Int) -> UInt64 {
        PCIMemoryMap.ecamBase + UInt64(function.bus) << 20 + UInt64(function.device) << 15
            + UInt64(function.function) << 12 + UInt64(offset)
    }

    /// Through ports 0xCF8/0xCFC, as Linux's type-1 accessors do.
    func portConfig(_ offset: Int, width: Int = 4, at function: PCIAddress = Machine.device) -> UInt32 {
        writePort(0xCF8, width: 4, Self.configAddress(function, offset))
        return readPort(0xCFC + UInt64(offset & 3), width: width)
    }

    func setPortConfig(_ offset: Int, width: Int = 4, _ value: UInt32, at function: PCIAddress = Machine.device) {
        writePort(0xCF8, width: 4, Self.configAddress(function, offset))
        writePort(0xCFC + UInt64(offset & 3), width: width, value)
    }

    static func configAddress(_ function: PCIAddress, _ offset: Int) -> UInt32 {
        1 << 31 | UInt32(function.bus) << 16 | UInt32(function.device) << 11 | UInt32(function.function) << 8
            | UInt32(offset & 0xFC)
    }

    /// The capability list: (position, id) pairs, at most 48 so a broken list cannot loop.
    func capabilityList() -> [(position: Int, id: UInt8)] {
        var list: [(Int, UInt8)] = []
        guard config(Config.status, width: 2) & 0x10 != 0 else { return [] }
        var position = Int(config(Config.capabilities, width: 1) & 0xFC)
        while position >= 0x40 && list.count < 48 {
            list.append((position, UInt8(config(position, width: 1))))
            position = Int(config(position + 1, width: 1) & 0xFC)
        }
        return list
    }

    func virtioCapabilities() -> [VirtioCapability] {
        capabilityList().filter { $0.id == 0x09 }.map { cap in
            VirtioCapability(
                position: cap.position, type: UInt8(config(cap.position + 3, width: 1)),
                bar: UInt8(config(cap.position + 4, width: 1)), offset: config(cap.position + 8),
                length: config(cap.position + 12))
        }
    }

    /// Turns on memory decoding and bus mastering, as a driver does before touching the BAR.
    func enable() {
        setConfig(Config.command, width: 2, Config.memorySpace | Config.busMaster)
    }

    // MARK: BAR 0

    func bar(_ offset: UInt64, width: Int) -> UInt64 { readMMIO(Self.barBase + offset, width: width) }
    func setBar(_ offset: UInt64, width: Int, _ value: UInt64) { writeMMIO(Self.barBase + offset, width: width, value) }

    var status: UInt8 { UInt8(bar(Common.status, width: 1)) }
    func addStatus(_ bits: UInt8) { setBar(Common.status, width: 1, UInt64(status | bits)) }
    var isr: UInt8 { UInt8(bar(0x800, width: 1)) }

    /// Reset, ACKNOWLEDGE, DRIVER, the offered features within `mask`, FEATURES_OK; whether FEATURES_OK reads back.
    func negotiate(mask: UInt64 = .max) -> Bool {
        setBar(Common.status, width: 1, 0)
        addStatus(Status.acknowledge)
        addStatus(Status.driver)
        var offered: UInt64 = 0
        for select: UInt64 in [0, 1] {
            setBar(Common.deviceFeatureSelect, width: 4, select)
            offered |= bar(Common.deviceFeature, width: 4) << (32 * select)
        }
        let accepted = offered & mask
        for select: UInt64 in [0, 1] {
            setBar(Common.driverFeatureSelect, width: 4, select)
            setBar(Common.driverFeature, width: 4, accepted >> (32 * select) & 0xFFFF_FFFF)
        }
        addStatus(Status.featuresOK)
        return status & Status.featuresOK != 0
    }

    /// Programs queue 0 (its size too, unless nil) with 32-bit halves, as Linux's vp_iowrite64_twopart does, and
    /// enables it.
    func setUpQueue(
        size: UInt64? = 8, descriptors: UInt64 = Machine.descriptors, available: UInt64 = Machine.available,
        used: UInt64 = Machine.used
    ) {
        setBar(Common.queueSelect, width: 2, 0)
        if let size { setBar(Common.queueSize, width: 2, size) }
        let fields = [(Common.queueDescriptor, descriptors), (Common.queueDriver, available), (Common.queueDevice, used)]
        for (field, address) in fields {
            setBar(field, width: 4, address & 0xFFFF_FFFF)
            setBar(field + 4, width: 4, address >> 32)
        }
        setBar(Common.queueEnable, width: 2, 1)
    }

    /// Puts descriptor 0 (`length` bytes at `buffer`, with `flags`) in the available ring of a queue of 8, asks for
    /// an interrupt when it is used (used_event, as the device offers EVENT_IDX) and notifies queue 0.
    func offer(length: UInt32 = 64, flags: UInt16 = DescriptorFlag.write) throws {
        var ring = ring
        try ring.adoptIndices()
        try ring.setUsedEvent(try ring.usedIndex())
        try memory.write(Array(repeating: Self.pattern, count: Int(length)), at: Self.buffer)
        try ring.setDescriptor(0, address: Self.buffer, length: length, flags: flags)
        try ring.makeAvailable(0)
        setBar(0x2000, width: 2, 0)
    }

    /// The driver's side of queue 0 as `setUpQueue()` lays it out.
    var ring: DriverRing {
        DriverRing(memory: memory, size: 8, descriptorTable: Self.descriptors, availableRing: Self.available, usedRing: Self.used)
    }

    func usedIndex() throws -> UInt16 { try ring.usedIndex() }

    func usedElement(_ slot: Int) throws -> (UInt32, UInt32) { try ring.usedElement(slot) }

    /// A whole request from reset: whether 64 random bytes come back through the used ring.
    func completesRequest() throws -> Bool {
        try memory.zero(at: 0, length: 0x5000)
        guard negotiate() else { return false }
        setUpQueue()
        addStatus(Status.driverOK)
        let before = try usedIndex()
        try offer()
        let filled = try memory.bytes(at: Self.buffer, count: 64)
        return try usedIndex() == before &+ 1 && usedElement(0) == (0, 64)
            && filled != Array(repeating: Self.pattern, count: 64) && status & Status.needsReset == 0
    }
}

/// Values recorded from any thread.
final class Log<Element: Sendable>: Sendable {
    private let items = Mutex<[Element]>([])

    func append(_ item: Element) { items.withLock { $0.append(item) } }
    var all: [Element] { items.withLock { $0 } }
}

/// Runs each of `bodies` on its own thread, all at once, and waits for them.
func concurrently(_ bodies: [@Sendable () -> Void]) {
    final class Work: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    var threads: [pthread_t] = []
    for body in bodies {
        var thread = pthread_t()
        let work = Unmanaged.passRetained(Work(body)).toOpaque()
        let created = pthread_create(&thread, nil, { argument in
            Unmanaged<Work>.fromOpaque(argument!).takeRetainedValue().body()
            return nil
        }, work)
        precondition(created == 0, "pthread_create failed")
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
}

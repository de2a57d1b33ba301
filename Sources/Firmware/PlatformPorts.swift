import Devices
import Synchronization

/// System control port A at 0x92 (the "fast A20 and reset" port of PS/2 chipsets): bit 1 gates A20, bit 0 set
/// resets the machine. KVM never masks A20, so the gate only reads back what was written; it starts open.
public final class SystemControlPortA: BusDevice {
    public static let port: UInt64 = 0x92
    private let value = Mutex<UInt8>(0x02)
    private let onReset: @Sendable () -> Void

    public init(onReset: @escaping @Sendable () -> Void) {
        self.onReset = onReset
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        let current = value.withLock { $0 }
        for index in data.indices { data[index] = offset == 0 && index == 0 ? current : 0xFF }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard offset == 0, let byte = data.first else { return }
        value.withLock { $0 = byte & 0x02 }
        if byte & 0x01 != 0 { onReset() }
    }
}

/// QEMU's debug console (isa-debugcon) at port 0x402, where SeaBIOS writes its log: reads return 0xE9, which tells
/// SeaBIOS the port is there. Writes go to `sink`.
public final class DebugConsole: BusDevice {
    public static let port: UInt64 = 0x402
    static let presence: UInt8 = 0xE9
    private let sink: any ConsoleOutput

    public init(sink: any ConsoleOutput) {
        self.sink = sink
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = index == 0 ? Self.presence : 0xFF }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        sink.write(data)
    }
}

/// Swallows guest writes to read-only firmware memory (KVM reports them as MMIO writes), logging the first and
/// then one line per `logInterval` writes.
public final class ReadOnlyMemoryWrites: BusDevice {
    public static let logInterval = 4096
    private let base: UInt64
    private let count = Atomic<Int>(0)
    private let log: @Sendable (String) -> Void

    public init(base: UInt64, log: @escaping @Sendable (String) -> Void) {
        self.base = base
        self.log = log
    }

    /// Writes dropped so far.
    public var dropped: Int { count.load(ordering: .relaxed) }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0xFF)
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        let previous = count.add(1, ordering: .relaxed).oldValue
        if previous % Self.logInterval == 0 {
            log("guest wrote to read-only firmware at 0x\(String(base &+ offset, radix: 16)) (\(previous + 1) writes dropped so far)")
        }
    }
}

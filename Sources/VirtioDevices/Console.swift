import Devices
import GuestMemory
import Virtio

/// A virtio-console device (VIRTIO 1.2 §5.3) with a single port and no MULTIPORT: queue 0 (receiveq) carries
/// host input to the guest, queue 1 (transmitq) guest output to `output`. The configuration space reports an
/// 80×25 console and takes emergency writes (EMERG_WRITE), one byte at a time, even before the driver is ready.
///
/// A transmit notification handles at most one queue's worth of chains; the rest wait for the next one. Host
/// input goes in through `receive(_:)`, which fills whatever receive buffers the driver has made available.
public struct Console: VirtioDevice {
    /// VIRTIO_CONSOLE_F_SIZE: `cols` and `rows` are valid.
    public static let sizeFeature = VirtioFeatures(bit: 0)
    /// VIRTIO_CONSOLE_F_EMERG_WRITE: the driver may write a byte to `emerg_wr`.
    public static let emergencyWriteFeature = VirtioFeatures(bit: 2)
    /// The receive queue's index.
    public static let receiveQueue = 0
    /// The transmit queue's index.
    public static let transmitQueue = 1
    /// Columns reported in the configuration space.
    public static let columns: UInt16 = 80
    /// Rows reported in the configuration space.
    public static let rows: UInt16 = 25

    /// Offset of `emerg_wr` in the configuration space (after cols, rows and max_nr_ports).
    private static let emergencyWriteOffset = 8

    private let memory: GuestMemory
    private let output: any ConsoleOutput
    private let queueSize: UInt16
    private var receiveq: SplitQueue?
    private var transmitq: SplitQueue?
    private var interrupt: (any InterruptSignal)?
    private var chain: DescriptorChain

    /// A console reading and writing guest buffers in `memory`, sending guest output to `output`, offering
    /// queues of up to `queueSize` descriptors (a power of two).
    public init(memory: GuestMemory, output: any ConsoleOutput, queueSize: UInt16 = 64) {
        precondition(
            queueSize != 0 && queueSize <= SplitQueue.maximumSize && queueSize & (queueSize - 1) == 0,
            "queue size \(queueSize) is not a power of two between 1 and \(SplitQueue.maximumSize)"
        )
        self.memory = memory
        self.output = output
        self.queueSize = queueSize
        chain = DescriptorChain(capacity: Int(queueSize))
    }

    public var deviceType: VirtioDeviceType { .console }
    public var features: VirtioFeatures {
        [.version1, .eventIndex, .indirectDescriptors, Self.sizeFeature, Self.emergencyWriteFeature]
    }
    public var queueCount: Int { 2 }
    public func maximumQueueSize(_ queue: Int) -> UInt16 { queue < 2 ? queueSize : 0 }
    /// cols (u16), rows (u16), max_nr_ports (u32), emerg_wr (u32).
    public var configurationSize: Int { 12 }

    public func readConfiguration(offset: Int, into buffer: UnsafeMutableRawBufferPointer) {
        // emerg_wr is write-only and reads as zero.
        let fields = UInt64(Self.columns) | UInt64(Self.rows) << 16 | 1 << 32
        for index in buffer.indices {
            let byte = offset + index
            buffer[index] = (0..<8).contains(byte) ? UInt8(truncatingIfNeeded: fields >> (8 * UInt64(byte))) : 0
        }
    }

    public mutating func writeConfiguration(offset: Int, bytes: UnsafeRawBufferPointer) {
        guard offset == Self.emergencyWriteOffset, !bytes.isEmpty else { return }
        // The character is emerg_wr's low byte; the configuration space is little-endian.
        output.write(UnsafeRawBufferPointer(rebasing: bytes[0..<1]))
    }

    public mutating func activate(
        features: VirtioFeatures, queues: [SplitQueue?], interrupt: any InterruptSignal
    ) throws(VirtioDeviceError) {
        guard queues.count == 2, let receiveq = queues[Self.receiveQueue], let transmitq = queues[Self.transmitQueue]
        else { throw .activation("the receive and transmit queues must both be enabled") }
        self.receiveq = receiveq
        self.transmitq = transmitq
        self.interrupt = interrupt
    }

    /// Transmit notifications drain the transmitq; receiveq notifications need no action, as input waits
    /// for `receive(_:)`.
    public mutating func notify(queue index: Int) {
        guard index == Self.transmitQueue, var queue = transmitq, let interrupt else { return }
        var budget = Int(queue.size)
        queue.disableNotifications()
        var pending = false
        do {
            repeat {
                while budget > 0, try queue.nextChain(into: &chain) {
                    guard chain.readableCount == chain.count else {
                        return fail(interrupt, "transmit chain \(chain.head) has device-writable buffers")
                    }
                    for segment in chain {
                        guard let pointer = try? memory.pointer(at: segment.address, length: UInt64(segment.length))
                        else { return fail(interrupt, "transmit chain \(chain.head) has a buffer outside guest RAM") }
                        output.write(UnsafeRawBufferPointer(start: pointer, count: Int(segment.length)))
                    }
                    queue.addUsed(head: chain.head, length: 0)
                    budget -= 1
                }
                if queue.needsNotification() { interrupt.signalUsedBuffers(queue: index) }
                pending = queue.enableNotifications()
            } while pending && budget > 0
        } catch {
            return fail(interrupt, "\(error)")
        }
        transmitq = queue
        // Stopped at the budget with buffers left: the driver published them already and will not notify again.
        if pending { interrupt.requestService(queue: index) }
    }

    /// Copies host input into the receive buffers the driver has made available, at most one queue's worth of
    /// chains, and signals the driver; returns how many leading bytes of `bytes` were accepted. The rest are
    /// not consumed: the caller may offer them again later. Returns 0 while the device is not running.
    ///
    /// The transport owns the device; reach it through `VirtioMMIOTransport.withDevice(_:)`, cast to `Console`,
    /// call this, and store the result back.
    public mutating func receive(_ bytes: some Sequence<UInt8>) -> Int {
        guard var queue = receiveq, let interrupt else { return 0 }
        var iterator = bytes.makeIterator()
        var pending = iterator.next()
        var accepted = 0
        var budget = Int(queue.size)
        do {
            while pending != nil, budget > 0, try queue.nextChain(into: &chain) {
                guard chain.readableCount == 0 else {
                    fail(interrupt, "receive chain \(chain.head) has device-readable buffers")
                    return accepted
                }
                var written = 0
                for segment in chain where pending != nil {
                    guard let pointer = try? memory.pointer(at: segment.address, length: UInt64(segment.length)) else {
                        fail(interrupt, "receive chain \(chain.head) has a buffer outside guest RAM")
                        return accepted
                    }
                    var offset = 0
                    while offset < Int(segment.length), let byte = pending {
                        pointer.storeBytes(of: byte, toByteOffset: offset, as: UInt8.self)
                        offset += 1
                        pending = iterator.next()
                    }
                    written += offset
                }
                queue.addUsed(head: chain.head, length: UInt32(written))
                accepted += written
                budget -= 1
            }
        } catch {
            fail(interrupt, "\(error)")
            return accepted
        }
        if queue.needsNotification() { interrupt.signalUsedBuffers(queue: Self.receiveQueue) }
        receiveq = queue
        return accepted
    }

    public mutating func reset() {
        receiveq = nil
        transmitq = nil
        interrupt = nil
    }

    /// Drops the queues and asks the driver for a reset.
    private mutating func fail(_ interrupt: any InterruptSignal, _ reason: String) {
        receiveq = nil
        transmitq = nil
        interrupt.signalNeedsReset(reason: "virtio-console: \(reason)")
    }
}

import Devices
import GuestMemory
import Synchronization

/// QEMU's fw_cfg device on x86 I/O ports (docs/specs/fw_cfg.rst): a selector at 0x510, a data port at 0x511 and the
/// DMA address registers at 0x514 (high half) and 0x518 (low half; writing it starts the transfer), big-endian.
///
/// Every item is read-only. A DMA descriptor is guest input: one whose own 16 bytes lie outside RAM is dropped,
/// and one with unknown control bits, a write, or a buffer outside RAM fails with the error bit set. Neither
/// disturbs the selection of later requests beyond what the descriptor asked for; the first of each is logged.
public final class FirmwareConfigDevice: BusDevice {
    /// The selector port; the device spans `portSpan` ports from it.
    public static let basePort: UInt64 = 0x510
    public static let portSpan: UInt64 = 12
    /// Offsets of the registers inside the span.
    enum Register {
        static let selector: UInt64 = 0
        static let data: UInt64 = 1
        static let dmaHigh: UInt64 = 4
        static let dmaLow: UInt64 = 8
    }
    /// What reads of the DMA address registers return: "QEMU CFG", so a guest can detect the DMA interface.
    static let dmaSignature = Array("QEMU CFG".utf8)

    /// The control word of a DMA descriptor (fw_cfg.rst, "FWCfgDmaAccess").
    public enum Control {
        public static let error: UInt32 = 1 << 0
        public static let read: UInt32 = 1 << 1
        public static let skip: UInt32 = 1 << 2
        public static let select: UInt32 = 1 << 3
        public static let write: UInt32 = 1 << 4
        /// The bits below the selector key that have a meaning.
        static let known: UInt32 = error | read | skip | select | write
    }
    /// Bytes of a DMA descriptor: control, length (both 32-bit), address (64-bit), all big-endian.
    public static let descriptorLength: UInt64 = 16

    struct State {
        var key: UInt16 = FirmwareConfigItems.Key.signature
        var offset: Int = 0
        var dmaHigh: UInt32 = 0
        var warnedDescriptor = false
        var warnedRequest = false
    }

    private let items: FirmwareConfigItems
    private let memory: GuestMemory
    private let state = Mutex(State())
    private let log: @Sendable (String) -> Void

    /// - Parameter log: receives one line for the first dropped and the first failed DMA request.
    public init(items: FirmwareConfigItems, memory: GuestMemory, log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.items = items
        self.memory = memory
        self.log = log
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        if offset == Register.data {
            state.withLock { state in
                let content = items.contents[state.key]
                for index in data.indices {
                    if let content, state.offset < content.count {
                        data[index] = content[state.offset]
                        state.offset += 1
                    } else {
                        data[index] = 0
                    }
                }
            }
            return
        }
        for index in data.indices {
            let register = offset &+ UInt64(index)
            data[index] = register >= Register.dmaHigh && register < Register.dmaHigh + 8
                ? Self.dmaSignature[Int(register - Register.dmaHigh)] : 0
        }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        switch (offset, data.count) {
        case (Register.selector, 2):
            let key = UInt16(data[0]) | UInt16(data[1]) << 8
            state.withLock { $0.select(key) }
        case (Register.dmaHigh, 4):
            let high = Self.bigEndian32(data)
            state.withLock { $0.dmaHigh = high }
        case (Register.dmaLow, 4):
            let low = Self.bigEndian32(data)
            state.withLock { state in
                transfer(descriptorAt: UInt64(state.dmaHigh) << 32 | UInt64(low), state: &state)
                state.dmaHigh = 0
            }
        default:
            break
        }
    }

    static func bigEndian32(_ data: UnsafeRawBufferPointer) -> UInt32 {
        data.reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// Runs the DMA request whose descriptor is at `address`, then writes its outcome into the control word.
    private func transfer(descriptorAt address: UInt64, state: inout State) {
        let control: UInt32
        let length: UInt32
        let buffer: UInt64
        do {
            control = UInt32(bigEndian: try memory.load(UInt32.self, at: address))
            length = UInt32(bigEndian: try memory.load(UInt32.self, at: address &+ 4))
            buffer = UInt64(bigEndian: try memory.load(UInt64.self, at: address &+ 8))
        } catch {
            if !state.warnedDescriptor {
                state.warnedDescriptor = true
                log("fw_cfg: DMA descriptor at 0x\(String(address, radix: 16)) lies outside guest RAM; request dropped")
            }
            return
        }
        let failure = perform(control: control, length: length, buffer: buffer, state: &state)
        if let failure, !state.warnedRequest {
            state.warnedRequest = true
            log("fw_cfg: DMA request at 0x\(String(address, radix: 16)) failed: \(failure)")
        }
        let outcome: UInt32 = failure == nil ? 0 : Control.error
        try? memory.store(outcome.bigEndian, at: address)
    }

    /// Carries out one request; returns why it failed, or nil.
    private func perform(control: UInt32, length: UInt32, buffer: UInt64, state: inout State) -> String? {
        guard control & 0xFFFF & ~Control.known == 0 else {
            return "unknown control bits 0x\(String(control & 0xFFFF & ~Control.known, radix: 16))"
        }
        if control & Control.select != 0 { state.select(UInt16(control >> 16)) }
        if control & Control.read != 0 {
            return read(length: length, into: buffer, state: &state)
        }
        if control & Control.write != 0 { return "item 0x\(String(state.key, radix: 16)) is read-only" }
        if control & Control.skip != 0 { state.advance(by: Int(length)) }
        return nil
    }

    /// Copies `length` bytes of the selected item from its current offset into guest memory at `buffer`, zeros
    /// past the item's end.
    private func read(length: UInt32, into buffer: UInt64, state: inout State) -> String? {
        let destination: UnsafeMutableRawPointer
        do {
            destination = try memory.pointer(at: buffer, length: UInt64(length))
        } catch {
            return "buffer 0x\(String(buffer, radix: 16))+0x\(String(length, radix: 16)) lies outside guest RAM"
        }
        let count = Int(length)
        let content = items.contents[state.key] ?? []
        let available = max(0, min(count, content.count - state.offset))
        if available > 0 {
            content.withUnsafeBytes { bytes in
                destination.copyMemory(from: bytes.baseAddress! + state.offset, byteCount: available)
            }
        }
        if count > available { (destination + available).initializeMemory(as: UInt8.self, repeating: 0, count: count - available) }
        state.advance(by: count)
        return nil
    }
}

extension FirmwareConfigDevice.State {
    /// Selects `key` (the write-channel bit, 0x4000, is ignored: nothing is writable) and rewinds to its start.
    mutating func select(_ key: UInt16) {
        self.key = key & ~0x4000
        offset = 0
    }

    /// Moves the read position forward, stopping at a bound no item reaches.
    mutating func advance(by count: Int) {
        offset = min(offset + count, Int(UInt32.max))
    }
}

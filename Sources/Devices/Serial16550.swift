import Synchronization

/// A 16550A UART, as on COM1. Transmission is instantaneous; received bytes queue until the guest reads them.
public final class Serial16550: BusDevice {
    /// The I/O port base and IRQ of COM1.
    public static let com1Base: UInt64 = 0x3F8
    public static let com1IRQ: UInt32 = 4
    /// Received bytes held before further input is dropped.
    public static let receiveCapacity = 4096

    enum Register {
        static let data: UInt64 = 0, interruptEnable: UInt64 = 1, interruptIdentification: UInt64 = 2
        static let lineControl: UInt64 = 3, modemControl: UInt64 = 4, lineStatus: UInt64 = 5
        static let modemStatus: UInt64 = 6, scratch: UInt64 = 7
    }

    struct State {
        var interruptEnable: UInt8 = 0
        var lineControl: UInt8 = 0x03
        var modemControl: UInt8 = 0x08
        var scratch: UInt8 = 0
        var divisorLow: UInt8 = 0x0C
        var divisorHigh: UInt8 = 0
        var fifoControl: UInt8 = 0
        /// Set when the transmitter became empty and the guest has not yet acknowledged it through IIR or THR.
        var transmitterEmptyPending = true
        var receive: [UInt8] = []
        var receiveHead = 0
        var lineAsserted = false

        var dlab: Bool { lineControl & 0x80 != 0 }
        var loopback: Bool { modemControl & 0x10 != 0 }
        var hasReceivedData: Bool { receiveHead < receive.count }

        /// IIR value: the highest-priority pending, enabled interrupt (bit 0 set when none).
        var identification: UInt8 {
            let fifoBits: UInt8 = fifoControl & 1 != 0 ? 0xC0 : 0
            if interruptEnable & 0x01 != 0 && hasReceivedData { return fifoBits | 0x04 }
            if interruptEnable & 0x02 != 0 && transmitterEmptyPending { return fifoBits | 0x02 }
            return fifoBits | 0x01
        }

        var lineStatus: UInt8 { 0x60 | (hasReceivedData ? 0x01 : 0) }

        var modemStatus: UInt8 {
            guard loopback else { return 0xB0 }  // DCD, DSR, CTS
            let control = modemControl
            return (control & 0x02 != 0 ? 0x10 : 0) | (control & 0x01 != 0 ? 0x20 : 0)
                | (control & 0x04 != 0 ? 0x40 : 0) | (control & 0x08 != 0 ? 0x80 : 0)
        }

        mutating func popReceived() -> UInt8 {
            guard hasReceivedData else { return 0 }
            let byte = receive[receiveHead]
            receiveHead += 1
            if receiveHead == receive.count {
                receive.removeAll(keepingCapacity: true)
                receiveHead = 0
            }
            return byte
        }

        mutating func pushReceived(_ byte: UInt8) -> Bool {
            guard receive.count - receiveHead < Serial16550.receiveCapacity else { return false }
            if receiveHead >= Serial16550.receiveCapacity {
                receive.removeFirst(receiveHead)
                receiveHead = 0
            }
            receive.append(byte)
            return true
        }
    }

    private let state = Mutex(State())
    private let output: any ConsoleOutput
    private let interrupt: any InterruptLine

    public init(output: any ConsoleOutput, interrupt: any InterruptLine) {
        self.output = output
        self.interrupt = interrupt
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        let value: UInt8 = state.withLock { state in
            let value: UInt8
            switch offset {
            case Register.data:
                value = state.dlab ? state.divisorLow : state.popReceived()
            case Register.interruptEnable:
                value = state.dlab ? state.divisorHigh : state.interruptEnable
            case Register.interruptIdentification:
                value = state.identification
                if value & 0x0F == 0x02 { state.transmitterEmptyPending = false }
            case Register.lineControl: value = state.lineControl
            case Register.modemControl: value = state.modemControl
            case Register.lineStatus: value = state.lineStatus
            case Register.modemStatus: value = state.modemStatus
            case Register.scratch: value = state.scratch
            default: value = 0xFF
            }
            updateInterrupt(&state)
            return value
        }
        data[0] = value
        for index in 1..<data.count { data[index] = 0 }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        var transmit = false
        state.withLock { state in
            switch offset {
            case Register.data:
                if state.dlab {
                    state.divisorLow = value
                } else if state.loopback {
                    _ = state.pushReceived(value)
                    state.transmitterEmptyPending = true
                } else {
                    transmit = true
                    state.transmitterEmptyPending = true
                }
            case Register.interruptEnable:
                if state.dlab {
                    state.divisorHigh = value
                } else {
                    // Enabling THRE interrupts with an empty transmitter raises one at once, as on real hardware.
                    if value & 0x02 != 0 && state.interruptEnable & 0x02 == 0 { state.transmitterEmptyPending = true }
                    state.interruptEnable = value & 0x0F
                }
            case Register.interruptIdentification:
                state.fifoControl = value
                if value & 0x02 != 0 {
                    state.receive.removeAll(keepingCapacity: true)
                    state.receiveHead = 0
                }
            case Register.lineControl: state.lineControl = value
            case Register.modemControl: state.modemControl = value & 0x1F
            case Register.scratch: state.scratch = value
            default: break
            }
            updateInterrupt(&state)
        }
        if transmit {
            withUnsafeBytes(of: value) { output.write($0) }
        }
    }

    /// Queues bytes typed on the host console for the guest. Returns how many were accepted.
    @discardableResult
    public func receive(_ bytes: some Sequence<UInt8>) -> Int {
        state.withLock { state in
            var accepted = 0
            for byte in bytes {
                guard state.pushReceived(byte) else { break }
                accepted += 1
            }
            updateInterrupt(&state)
            return accepted
        }
    }

    private func updateInterrupt(_ state: inout State) {
        // OUT2 gates the UART's interrupt onto the ISA bus, as PC-compatible boards wire it.
        let asserted = state.identification & 0x01 == 0 && state.modemControl & 0x08 != 0
        if asserted != state.lineAsserted {
            state.lineAsserted = asserted
            interrupt.setLevel(asserted)
        }
    }
}

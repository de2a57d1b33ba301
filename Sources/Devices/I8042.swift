import Synchronization

/// A minimal i8042 keyboard controller: enough for guests to probe it, and its reset line (command 0xFE) to end the VM.
public final class I8042: BusDevice {
    /// Port of the data register; the command/status register is at `dataPort + 4`.
    public static let dataPort: UInt64 = 0x60
    public static let commandPort: UInt64 = 0x64

    /// Bytes the controller holds for the guest; further responses are dropped until it reads some.
    public static let outputCapacity = 16

    struct State {
        var output: [UInt8] = []
        var configuration: UInt8 = 0x45  // keyboard interrupt enabled, system flag, translation
        var pendingCommand: UInt8?
        var outputPort: UInt8 = 0x01

        mutating func push(_ byte: UInt8) {
            if output.count < I8042.outputCapacity { output.append(byte) }
        }
    }

    private let state = Mutex(State())
    private let onReset: @Sendable () -> Void

    /// - Parameter onReset: called when the guest pulses the CPU reset line.
    public init(onReset: @escaping @Sendable () -> Void) {
        self.onReset = onReset
    }

    /// Bytes of port space the controller occupies from `dataPort`: data at offset 0, command/status at offset 4.
    /// Port 0x61 in between belongs to the in-kernel PIT's speaker stub and never reaches the VMM.
    public static let portSpan: UInt64 = 5

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        data[0] = offset == 0 || offset == 4 ? readRegister(commandPort: offset == 4) : 0xFF
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard let value = data.first, offset == 0 || offset == 4 else { return }
        writeRegister(value, commandPort: offset == 4)
    }

    func readRegister(commandPort: Bool) -> UInt8 {
        state.withLock { state in
            if commandPort {
                return (state.output.isEmpty ? 0 : 0x01) | 0x04 | (state.pendingCommand == nil ? 0 : 0x08)
            }
            return state.output.isEmpty ? 0 : state.output.removeFirst()
        }
    }

    func writeRegister(_ value: UInt8, commandPort: Bool) {
        var reset = false
        state.withLock { state in
            if commandPort {
                state.pendingCommand = nil
                switch value {
                case 0x20: state.push(state.configuration)
                case 0x60, 0xD1, 0xD2, 0xD3, 0xD4: state.pendingCommand = value
                case 0xA9, 0xAB: state.push(0x00)  // port tests pass
                case 0xAA: state.push(0x55)  // controller self-test passed
                case 0xD0: state.push(state.outputPort)
                case 0xFE: reset = true
                default: break  // enable/disable ports and the rest need no response
                }
                return
            }
            switch state.pendingCommand {
            case 0x60: state.configuration = value
            case 0xD1:
                state.outputPort = value
                if value & 0x01 == 0 { reset = true }
            case 0xD2: state.push(value)
            case 0xD3, 0xD4: break  // no auxiliary device
            default:
                // A command to the keyboard: acknowledge it, and answer a reset with a passed self-test.
                state.push(0xFA)
                if value == 0xFF { state.push(0xAA) }
            }
            state.pendingCommand = nil
        }
        if reset { onReset() }
    }
}

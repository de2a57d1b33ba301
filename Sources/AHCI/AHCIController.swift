import Devices
import GuestMemory
import PCI
import Synchronization

/// An AHCI 1.3 SATA controller with the identity of Intel's ICH9 (8086:2922, as on QEMU's q35): six ports, each
/// empty or holding an ATA disk or an ATAPI CD-ROM, registers in BAR 5 (ABAR), INTx on pin A.
///
/// Commands run synchronously when the guest writes PxCI or PxSACT. Everything the guest hands the controller is
/// hostile input: command lists, command tables, FISes and region tables must lie in guest RAM, and a command that
/// names memory outside it or a transfer its regions cannot hold fails with an ATA error on that port alone
/// (TFES, PxCI left set until the guest stops the port); the first such failure is logged.
public final class AHCIController: PCIDevice {
    public static let identity = PCIIdentity(
        vendorID: 0x8086, deviceID: 0x2922, revision: 0x02,
        classCode: PCIClassCode(base: 0x01, subclass: 0x06, programmingInterface: 0x01),
        subsystemVendorID: 0x1AF4, subsystemID: 0x1100)
    public static let portCount = 6
    public static let barIndex = 5
    public static let barSize: UInt64 = 0x1000
    /// Bytes of the bounce buffer data moves through.
    static let bufferSize = 128 << 10

    /// Host registers (AHCI 1.3.1, 3.1) and port registers (3.3), relative to ABAR and to the port's block.
    enum Host {
        static let capabilities: UInt64 = 0x00
        static let control: UInt64 = 0x04
        static let interruptStatus: UInt64 = 0x08
        static let portsImplemented: UInt64 = 0x0C
        static let version: UInt64 = 0x10
        static let capabilities2: UInt64 = 0x24
        static let portsStart: UInt64 = 0x100
        static let portStride: UInt64 = 0x80
    }
    enum Control {
        static let reset: UInt32 = 1 << 0
        static let interruptEnable: UInt32 = 1 << 1
        static let ahciEnable: UInt32 = 1 << 31
    }

    struct State {
        var config: PCIConfigSpace
        var control: UInt32 = Control.ahciEnable
        var interruptStatus: UInt32 = 0
        var ports: [AHCIPort]
        var warned = false
        var asserted = false
    }

    private let memory: GuestMemory
    private let interrupt: any InterruptLine
    private let log: @Sendable (String) -> Void
    private let state: Mutex<State>
    /// The bounce buffer; owned here, used only under `state`'s lock.
    private nonisolated(unsafe) let buffer: UnsafeMutableRawBufferPointer

    /// - Parameters:
    ///   - drives: what each port holds, by port number (at most `portCount`); nil leaves a port empty.
    ///   - interruptLineRegister: the Interrupt Line register's value (the GSI pin A is wired to).
    public init(drives: [DriveConfiguration?], memory: GuestMemory, interrupt: any InterruptLine, interruptLineRegister: UInt8,
                log: @escaping @Sendable (String) -> Void) {
        precondition(drives.count <= Self.portCount, "ICH9 has \(Self.portCount) ports")
        var config = PCIConfigSpace(identity: Self.identity, interruptPin: .intA, interruptLine: interruptLineRegister)
        config.addBAR(Self.barIndex, PCIBAR(kind: .memory32, size: Self.barSize))
        let ports = (0..<Self.portCount).map { AHCIPort(drive: $0 < drives.count ? drives[$0] : nil) }
        state = Mutex(State(config: config, ports: ports))
        self.memory = memory
        self.interrupt = interrupt
        self.log = log
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.bufferSize, alignment: 4096)
    }

    deinit {
        buffer.deallocate()
    }

    // MARK: PCIDevice

    public func readConfiguration(offset: Int, width: Int) -> UInt32 {
        state.withLock { $0.config.read(offset: offset, width: width) }
    }

    public func writeConfiguration(offset: Int, width: Int, value: UInt32) {
        state.withLock { state in
            state.config.write(offset: offset, width: width, value: value)
            updateInterrupt(&state)
        }
    }

    public func mappedBARs() -> [PCIMappedBAR] {
        state.withLock { $0.config.mappedBARs() }
    }

    public func readBAR(_ index: Int, offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        let aligned = offset & ~3
        let value = state.withLock { readRegister(aligned, state: $0) }
        for position in data.indices {
            let byte = Int(offset - aligned) + position
            data[position] = byte < 4 ? UInt8(truncatingIfNeeded: value >> (8 * UInt32(byte))) : 0
        }
    }

    public func writeBAR(_ index: Int, offset: UInt64, from data: UnsafeRawBufferPointer) {
        // AHCI registers take dword writes; a qword write is two.
        guard offset % 4 == 0, data.count == 4 || data.count == 8 else { return }
        state.withLock { state in
            for dword in 0..<data.count / 4 {
                let value = data.loadUnaligned(fromByteOffset: 4 * dword, as: UInt32.self).littleEndian
                writeRegister(offset + UInt64(4 * dword), value: value, state: &state)
            }
            updateInterrupt(&state)
        }
    }

    // MARK: Registers

    private func readRegister(_ offset: UInt64, state: State) -> UInt32 {
        if offset >= Host.portsStart {
            let port = Int((offset - Host.portsStart) / Host.portStride)
            guard port < Self.portCount else { return 0 }
            return state.ports[port].read((offset - Host.portsStart) % Host.portStride)
        }
        switch offset {
        case Host.capabilities:
            // 64-bit addressing, NCQ, AHCI only, Gen 1 speed, 32 command slots, the port count.
            return 1 << 31 | 1 << 30 | 1 << 18 | 1 << 20 | 31 << 8 | UInt32(Self.portCount - 1)
        case Host.control: return state.control
        case Host.interruptStatus: return state.interruptStatus
        case Host.portsImplemented: return (1 << UInt32(Self.portCount)) - 1
        case Host.version: return 0x0001_0300
        default: return 0
        }
    }

    private func writeRegister(_ offset: UInt64, value: UInt32, state: inout State) {
        if offset >= Host.portsStart {
            let port = Int((offset - Host.portsStart) / Host.portStride)
            guard port < Self.portCount else { return }
            let register = (offset - Host.portsStart) % Host.portStride
            let work = state.ports[port].write(register, value: value)
            if work { runCommands(port: port, state: &state) }
            return
        }
        switch offset {
        case Host.control:
            if value & Control.reset != 0 {
                for index in state.ports.indices { state.ports[index].reset() }
                state.control = Control.ahciEnable
                state.interruptStatus = 0
            } else {
                state.control = Control.ahciEnable | value & Control.interruptEnable
            }
        case Host.interruptStatus:
            state.interruptStatus &= ~value
            // A port whose interrupt is still pending keeps its bit.
            for (index, port) in state.ports.enumerated() where port.pendingInterrupt {
                state.interruptStatus |= 1 << UInt32(index)
            }
        default:
            break
        }
    }

    /// Runs every issued command of `port`, in slot order, until none is left or one fails.
    private func runCommands(port index: Int, state: inout State) {
        let busMaster = state.config.command.contains(.busMaster)
        var failure: String?
        state.ports[index].run(memory: memory, busMaster: busMaster, buffer: buffer, failure: &failure)
        if state.ports[index].pendingInterrupt { state.interruptStatus |= 1 << UInt32(index) }
        if let failure, !state.warned {
            state.warned = true
            log("AHCI port \(index): \(failure)")
        }
    }

    private func updateInterrupt(_ state: inout State) {
        let level = state.control & Control.interruptEnable != 0 && state.interruptStatus != 0
            && !state.config.command.contains(.interruptDisable)
        if level != state.asserted {
            state.asserted = level
            interrupt.setLevel(level)
        }
    }
}

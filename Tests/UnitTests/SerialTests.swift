import Devices
import Synchronization
import TestSupport
import Testing

final class RecordingOutput: ConsoleOutput {
    let bytes = Mutex<[UInt8]>([])
    func write(_ data: UnsafeRawBufferPointer) { bytes.withLock { $0.append(contentsOf: data) } }
}

struct UART {
    let serial: Serial16550
    let line = RecordingLine()
    let output = RecordingOutput()

    init() {
        serial = Serial16550(output: output, interrupt: line)
    }

    func read(_ offset: UInt64) -> UInt8 {
        var value: UInt8 = 0
        withUnsafeMutableBytes(of: &value) { serial.read(offset: offset, into: $0) }
        return value
    }

    func write(_ offset: UInt64, _ value: UInt8) {
        withUnsafeBytes(of: value) { serial.write(offset: offset, from: $0) }
    }
}

@Suite struct SerialTests {
    @Test func transmitsBytesAndReportsAnEmptyTransmitter() {
        let uart = UART()
        #expect(uart.read(5) & 0x60 == 0x60)
        for byte in Array("hi\n".utf8) { uart.write(0, byte) }
        #expect(uart.output.bytes.withLock { $0 } == Array("hi\n".utf8))
    }

    @Test func divisorLatchSharesRegistersWithDataAndIER() {
        let uart = UART()
        uart.write(3, 0x83)  // DLAB on, 8N1
        uart.write(0, 0x01)
        uart.write(1, 0x00)
        #expect(uart.read(0) == 0x01)
        uart.write(3, 0x03)
        #expect(uart.output.bytes.withLock { $0 }.isEmpty)
        #expect(uart.read(3) == 0x03)
    }

    @Test func receivedBytesRaiseTheInterruptUntilRead() {
        let uart = UART()
        uart.write(4, 0x08)  // OUT2
        uart.write(1, 0x01)  // RX data interrupt
        #expect(uart.read(2) & 0x01 == 1)
        #expect(uart.serial.receive(Array("ok".utf8)) == 2)
        #expect(uart.line.isAsserted)
        #expect(uart.read(2) & 0x0F == 0x04)
        #expect(uart.read(5) & 0x01 == 1)
        #expect(uart.read(0) == UInt8(ascii: "o"))
        #expect(uart.read(0) == UInt8(ascii: "k"))
        #expect(uart.read(5) & 0x01 == 0)
        #expect(!uart.line.isAsserted)
    }

    @Test func transmitterEmptyInterruptClearsOnIIRRead() {
        let uart = UART()
        uart.write(4, 0x08)
        uart.write(1, 0x02)
        #expect(uart.line.isAsserted)
        #expect(uart.read(2) & 0x0F == 0x02)
        #expect(!uart.line.isAsserted)
        uart.write(0, 0x41)
        #expect(uart.line.isAsserted)
    }

    @Test func interruptNeedsOUT2() {
        let uart = UART()
        uart.write(4, 0x00)
        uart.write(1, 0x01)
        uart.serial.receive([1])
        #expect(!uart.line.isAsserted)
    }

    @Test func loopbackEchoesDataAndModemLines() {
        let uart = UART()
        uart.write(4, 0x1A)  // loopback, OUT2, RTS
        #expect(uart.read(6) & 0xF0 == 0x90)
        uart.write(0, 0x5A)
        #expect(uart.read(0) == 0x5A)
        #expect(uart.output.bytes.withLock { $0 }.isEmpty)
    }

    @Test func scratchAndFIFOControl() {
        let uart = UART()
        uart.write(7, 0x42)
        #expect(uart.read(7) == 0x42)
        uart.write(2, 0x07)  // enable and clear FIFOs
        #expect(uart.read(2) & 0xC0 == 0xC0)
        uart.serial.receive([1, 2, 3])
        uart.write(2, 0x03)
        #expect(uart.read(5) & 0x01 == 0)
    }

    @Test func receiveQueueIsBounded() {
        let uart = UART()
        let accepted = uart.serial.receive([UInt8](repeating: 7, count: Serial16550.receiveCapacity + 10))
        #expect(accepted == Serial16550.receiveCapacity)
    }
}

@Suite struct ControlDeviceTests {
    @Test func i8042ResetCommandCallsBack() {
        let resets = Mutex(0)
        let controller = I8042(onReset: { resets.withLock { $0 += 1 } })
        withUnsafeBytes(of: UInt8(0xAA)) { controller.write(offset: 4, from: $0) }
        var status: UInt8 = 0
        withUnsafeMutableBytes(of: &status) { controller.read(offset: 4, into: $0) }
        #expect(status & 0x01 == 1)
        var data: UInt8 = 0
        withUnsafeMutableBytes(of: &data) { controller.read(offset: 0, into: $0) }
        #expect(data == 0x55)
        withUnsafeBytes(of: UInt8(0xFE)) { controller.write(offset: 4, from: $0) }
        #expect(resets.withLock { $0 } == 1)
    }

    @Test func debugExitReportsTheByte() {
        let statuses = Mutex<[UInt8]>([])
        let port = DebugExit(onExit: { status in statuses.withLock { $0.append(status) } })
        withUnsafeBytes(of: UInt16(0x0305)) { port.write(offset: 0, from: $0) }
        #expect(statuses.withLock { $0 } == [5])
    }
}

@Suite struct I8042HostileTests {
    @Test func outputQueueIsBounded() {
        let controller = I8042(onReset: {})
        for _ in 0..<10_000 { withUnsafeBytes(of: UInt8(0x20)) { controller.write(offset: 4, from: $0) } }
        var drained = 0
        var status: UInt8 = 1
        while status & 1 == 1 && drained < 100 {
            var byte: UInt8 = 0
            withUnsafeMutableBytes(of: &byte) { controller.read(offset: 0, into: $0) }
            drained += 1
            withUnsafeMutableBytes(of: &status) { controller.read(offset: 4, into: $0) }
        }
        #expect(drained == I8042.outputCapacity)
    }
}

import Devices
import PCI

/// How a virtio-pci function interrupts the driver (VIRTIO 1.2 §4.1.5.3–4.1.5.5): through the MSI-X vectors the
/// driver mapped while MSI-X is enabled, else through ISR status and the INTx# line, asserted while ISR status is
/// non-zero unless the Command register's Interrupt Disable is set. Also the configuration generation.
struct VirtioPCIInterrupts {
    /// VIRTIO_MSI_NO_VECTOR: no vector mapped.
    static let noVector: UInt16 = 0xFFFF
    /// ISR status bit: a queue has new used buffers.
    static let queueInterrupt: UInt8 = 1
    /// ISR status bit: the device configuration changed (or the device needs a reset).
    static let configurationInterrupt: UInt8 = 2

    var isr: UInt8 = 0
    var needsReset = false
    /// config_generation; see `noteConfigurationRead()`.
    var generation: UInt8 = 0
    /// Whether the configuration changed since the driver last read it.
    var configurationChanged = false
    var configVector = noVector
    var queueVectors: [UInt16]
    var msix: MSIXTable
    /// The Command register's Interrupt Disable bit.
    var intxDisabled = false
    private var lineAsserted = false
    private let line: any InterruptLine

    init(queueCount: Int, msix: MSIXTable, line: any InterruptLine) {
        queueVectors = Array(repeating: Self.noVector, count: queueCount)
        self.msix = msix
        self.line = line
    }

    /// The PCI Status register's Interrupt Status: INTx is pending, masked or not.
    var intxPending: Bool { isr != 0 && !msix.isEnabled }

    /// Drives the INTx# line to its level, when that changed.
    mutating func updateLine() {
        let level = intxPending && !intxDisabled
        guard level != lineAsserted else { return }
        lineAsserted = level
        line.setLevel(level)
    }

    /// The vector a driver's write of `value` maps: `value` when the table has it, else NO_VECTOR.
    func mappable(_ value: UInt16) -> UInt16 {
        Int(value) < msix.vectorCount ? value : Self.noVector
    }

    /// A used-buffer notification for `queue`.
    mutating func raiseQueue(_ queue: Int) {
        if msix.isEnabled {
            guard queue >= 0, queue < queueVectors.count, queueVectors[queue] != Self.noVector else { return }
            msix.signal(vector: Int(queueVectors[queue]))
        } else {
            isr |= Self.queueInterrupt
            updateLine()
        }
    }

    /// A configuration-change notification; ISR status records it under MSI-X too, as the specification asks.
    mutating func raiseConfiguration() {
        isr |= Self.configurationInterrupt
        if msix.isEnabled {
            if configVector != Self.noVector { msix.signal(vector: Int(configVector)) }
        } else {
            updateLine()
        }
    }

    /// Reads ISR status, which clears it and deasserts INTx#.
    mutating func takeISR() -> UInt8 {
        defer {
            isr = 0
            updateLine()
        }
        return isr
    }

    /// The driver is about to read the device configuration: a change since its last read moves the generation,
    /// so that a driver reading generation, fields, generation sees the change (VIRTIO 1.2 §4.1.4.3.1). Moving it
    /// only on reads keeps the 8-bit counter from wrapping back to a value the driver saw.
    mutating func noteConfigurationRead() {
        guard configurationChanged else { return }
        configurationChanged = false
        generation &+= 1
    }

    /// The device reset: ISR status clear, every event unmapped, INTx# deasserted. MSI-X itself belongs to PCI and
    /// keeps its table.
    mutating func reset() {
        isr = 0
        needsReset = false
        configVector = Self.noVector
        for queue in queueVectors.indices { queueVectors[queue] = Self.noVector }
        updateLine()
    }
}

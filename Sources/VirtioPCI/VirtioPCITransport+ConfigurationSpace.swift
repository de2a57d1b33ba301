import PCI
import Synchronization

/// Configuration space: the header and capabilities `VirtioPCILayout` built, plus what lives elsewhere — the
/// Status register's interrupt bit, the Command register's Interrupt Disable and the MSI-X Message Control, which
/// steer interrupt delivery, BAR 0's mapping, reported to the VMM, and the configuration-access window into BAR 0.
extension VirtioPCITransport {
    public func readConfiguration(offset: Int, width: Int) -> UInt32 {
        let access = offset..<offset + width
        if access.overlaps(windowCapability + 16..<windowCapability + 20) { windowAccess(write: false) }
        let status = PCIConfigSpace.Register.status
        return space.withLock { space in
            var value = space.read(offset: offset, width: width)
            if access.contains(status), interrupts.withLock({ $0.intxPending }) {
                value |= UInt32(PCIConfigSpace.interruptStatus) << (8 * (status - offset))
            }
            return value
        }
    }

    public func writeConfiguration(offset: Int, width: Int, value: UInt32) {
        let access = offset..<offset + width
        let command = PCIConfigSpace.Register.command
        let messageControl = msixCapability + 2
        let bar = PCIConfigSpace.Register.bar0 + 4 * Self.barIndex
        space.withLock { space in
            space.write(offset: offset, width: width, value: value)
            let touchesCommand = access.overlaps(command..<command + 2)
            let touchesMSIX = access.overlaps(messageControl..<messageControl + 2)
            guard touchesCommand || touchesMSIX else { return }
            let disabled = space.command.contains(.interruptDisable)
            let control = UInt16(space.read(offset: messageControl, width: 2))
            interrupts.withLock { interrupts in
                interrupts.intxDisabled = disabled
                interrupts.msix.setMessageControl(control)
                interrupts.updateLine()
            }
        }
        if access.overlaps(command..<command + 2) || access.overlaps(bar..<bar + 8) { reportMapping() }
        if access.overlaps(windowCapability + 16..<windowCapability + 20) { windowAccess(write: true) }
    }

    public func mappedBARs() -> [PCIMappedBAR] {
        space.withLock { $0.mappedBARs() }
    }

    /// Tells `onBARChange` about BAR 0's mapping when it differs from the last report.
    private func reportMapping() {
        mapping.withLock { reported in
            let base = space.withLock { $0.mappedBAR(Self.barIndex)?.base }
            guard base != reported else { return }
            reported = base
            onBARChange(base)
        }
    }

    /// The PCI configuration access capability (VIRTIO 1.2 §4.1.4.9): a read or write of pci_cfg_data becomes an
    /// access of cap.length (1, 2 or 4) bytes at cap.offset of BAR cap.bar, which must be aligned and inside BAR 0.
    private func windowAccess(write: Bool) {
        let capability = windowCapability
        let (bar, offset, length, data) = space.withLock { space in
            (
                Int(space.read(offset: capability + 4, width: 1)), UInt64(space.read(offset: capability + 8, width: 4)),
                Int(space.read(offset: capability + 12, width: 4)), space.read(offset: capability + 16, width: 4)
            )
        }
        guard bar == Self.barIndex, length == 1 || length == 2 || length == 4, offset % UInt64(length) == 0,
            offset + UInt64(length) <= barSize
        else {
            let window = "BAR \(bar), offset 0x\(String(offset, radix: 16)), length \(length)"
            return debugLog("virtio-pci: configuration access window (\(window)) ignored")
        }
        var value = data
        if write {
            withUnsafeBytes(of: value.littleEndian) {
                writeBAR(bar, offset: offset, from: UnsafeRawBufferPointer(rebasing: $0[0..<length]))
            }
        } else {
            withUnsafeMutableBytes(of: &value) {
                readBAR(bar, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<length]))
            }
            let result = UInt32(littleEndian: value)
            space.withLock { $0.store(result, offset: capability + 16, width: length) }
        }
    }
}

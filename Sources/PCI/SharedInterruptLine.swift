import Devices
import Synchronization

/// One level-triggered interrupt input with several sources, such as the PCI slots and virtio-mmio devices that
/// share an IOAPIC input: it is asserted while any source is, and driven only when that changes.
public final class SharedInterruptLine: Sendable {
    private struct Levels {
        var sources: [Bool] = []
        var assertedCount = 0
    }

    private let line: any InterruptLine
    private let levels = Mutex(Levels())

    /// Shares `line`, which starts deasserted.
    public init(_ line: any InterruptLine) {
        self.line = line
    }

    /// A new source on this line, initially deasserted. Call while building the machine.
    public func makeSource() -> any InterruptLine {
        let index = levels.withLock { levels in
            levels.sources.append(false)
            return levels.sources.count - 1
        }
        return Source(shared: self, index: index)
    }

    fileprivate func setLevel(_ asserted: Bool, source index: Int) {
        levels.withLock { levels in
            guard levels.sources[index] != asserted else { return }
            levels.sources[index] = asserted
            levels.assertedCount += asserted ? 1 : -1
            if levels.assertedCount == (asserted ? 1 : 0) { line.setLevel(asserted) }
        }
    }
}

/// One source of a `SharedInterruptLine`.
private struct Source: InterruptLine {
    let shared: SharedInterruptLine
    let index: Int

    func setLevel(_ asserted: Bool) { shared.setLevel(asserted, source: index) }
}

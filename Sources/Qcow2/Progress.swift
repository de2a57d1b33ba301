#if canImport(Glibc)
import Glibc
#endif

/// qemu-img's `-p` progress line on standard output: `    (12.34/100%)` followed by a carriage return,
/// reprinted when it moves by more than one percent, and ended with a newline.
public final class ProgressMeter {
    public enum Mode: Sendable {
        /// Prints nothing.
        case off
        /// Prints from the start (`-p`).
        case always
        /// Prints once the work has taken a second, when standard output is a terminal.
        case onTerminal
    }

    let mode: Mode
    let start: timespec
    var lastPrinted: Double = -1
    var started = false

    public init(_ mode: Mode) {
        self.mode = mode == .onTerminal && isatty(STDOUT_FILENO) == 0 ? .off : mode
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        start = now
    }

    /// Reports that `done` of `total` units are complete.
    public func update(_ done: UInt64, of total: UInt64) {
        if mode == .off { return }
        let percent = total == 0 ? 100 : Double(done) * 100 / Double(total)
        if !started {
            if mode == .onTerminal {
                var now = timespec()
                clock_gettime(CLOCK_MONOTONIC, &now)
                if now.tv_sec - start.tv_sec < 1 || (now.tv_sec - start.tv_sec == 1 && now.tv_nsec < start.tv_nsec) { return }
            }
            started = true
            emit(0)
        }
        if percent > lastPrinted + 1 || percent < lastPrinted - 1 || percent == 100 { emit(percent) }
    }

    /// Prints the final 100% and ends the line, if anything was printed.
    public func finish() {
        guard started else { return }
        emit(100)
        end()
    }

    /// Ends the line, if anything was printed (after a result printed over the progress line).
    public func end() {
        guard started else { return }
        fflush(nil)
        write(STDOUT_FILENO, "\n", 1)
    }

    func emit(_ percent: Double) {
        lastPrinted = percent
        let line = "    (" + cFormat("%3.2f", percent) + "/100%)\r"
        // What `print` buffered goes out first, so that lines keep their order.
        fflush(nil)
        line.utf8CString.withUnsafeBufferPointer { _ = write(STDOUT_FILENO, $0.baseAddress, $0.count - 1) }
    }
}

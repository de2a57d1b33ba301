import CKVM
import Glibc

/// A non-blocking eventfd used as a flag between threads: `raise` makes its descriptor readable, `lower` not.
/// An edge-triggered watcher sees each `raise` as a new event.
final class EventFlag: Sendable {
    /// The eventfd, closed when the flag goes away.
    let descriptor: Int32

    /// Creates the eventfd; nil when the process is out of descriptors.
    init?() {
        let descriptor = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard descriptor >= 0 else { return nil }
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }

    func raise() {
        var one: UInt64 = 1
        _ = write(descriptor, &one, 8)
    }

    func lower() {
        var count: UInt64 = 0
        _ = read(descriptor, &count, 8)
    }
}

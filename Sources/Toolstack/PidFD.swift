import CPidFD
import Glibc

/// An owned pidfd: it names one process for as long as it is open, and is closed when the last reference goes.
final class PidFD: Sendable {
    let descriptor: Int32

    /// Opens a pidfd for `pid`; nil when the process does not exist.
    init?(pid: Int32) {
        let descriptor = cpidfd_open(pid)
        guard descriptor >= 0 else { return nil }
        self.descriptor = descriptor
    }

    deinit {
        close(descriptor)
    }

    /// Sends `signal` to the process; false when it has already exited.
    func send(signal: Int32) -> Bool {
        cpidfd_send_signal(descriptor, signal) == 0
    }
}

import Devices
import Glibc
import Synchronization

/// Console output to a file descriptor (stdout or a log file).
public final class FileDescriptorOutput: ConsoleOutput {
    let descriptor: Int32
    let owned: Bool

    /// Writes to `descriptor`; closes it on deinit when `owned`.
    public init(descriptor: Int32, owned: Bool) {
        self.descriptor = descriptor
        self.owned = owned
    }

    /// Opens `path` for appending, creating it if needed: a regular file or a character device (such as /dev/null).
    /// The open does not block, so a FIFO put in its place is refused rather than waited on.
    public convenience init(appendingTo path: String) throws(ConfigError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0o644)
        guard fd >= 0 else { throw ConfigError("--console file:\(path): \(String(cString: strerror(errno)))") }
        var status = stat()
        let kind = fstat(fd, &status) == 0 ? status.st_mode & S_IFMT : 0
        guard kind == S_IFREG || kind == S_IFCHR, fcntl(fd, F_SETFL, O_APPEND) == 0 else {
            close(fd)
            throw ConfigError("--console file:\(path): \(HostFiles.describe(kind)), not a regular file or a character device; give a regular file or a character device")
        }
        self.init(descriptor: fd, owned: true)
    }

    deinit {
        if owned { close(descriptor) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                // EINTR means the vCPU was kicked to stop while the reader of this output stalled: drop the rest.
                if errno == EAGAIN { continue }
                return
            }
            offset += written
        }
    }
}

/// Console output that is thrown away.
public final class DiscardOutput: ConsoleOutput {
    public init() {}
    public func write(_ bytes: UnsafeRawBufferPointer) {}
}

/// Console output kept in memory, for tests and for callers that inspect what a guest printed.
public final class CapturedOutput: ConsoleOutput {
    private let buffer = Mutex<[UInt8]>([])

    public init() {}

    public func write(_ bytes: UnsafeRawBufferPointer) {
        buffer.withLock { $0.append(contentsOf: bytes) }
    }

    /// Everything written so far, decoded as UTF-8 (invalid sequences replaced).
    public var text: String {
        buffer.withLock { String(decoding: $0, as: UTF8.self) }
    }
}

/// Forwards host stdin to the guest's console (the UART, or virtio-console when the guest has one), in raw mode
/// when stdin is a terminal.
/// Ctrl-A x ends the VM; Ctrl-A Ctrl-A sends one Ctrl-A.
final class ConsoleInput: @unchecked Sendable {
    /// The escape key (Ctrl-A) and the key that quits after it.
    static let escapeKey: UInt8 = 0x01
    static let quitKey: UInt8 = UInt8(ascii: "x")

    private let deliver: @Sendable ([UInt8]) -> Void
    private let quit: @Sendable () -> Void
    private let wake = WakeEvent()
    private var savedTerminal: termios?
    private var thread: pthread_t?

    /// - Parameter deliver: hands typed bytes to the guest's console device.
    init(deliver: @escaping @Sendable ([UInt8]) -> Void, quit: @escaping @Sendable () -> Void) {
        self.deliver = deliver
        self.quit = quit
    }

    /// Puts the terminal into raw mode (if stdin is one) and starts forwarding.
    func start() {
        if isatty(STDIN_FILENO) == 1 {
            var settings = termios()
            if tcgetattr(STDIN_FILENO, &settings) == 0 {
                savedTerminal = settings
                cfmakeraw(&settings)
                settings.c_oflag |= tcflag_t(OPOST | ONLCR)
                tcsetattr(STDIN_FILENO, TCSANOW, &settings)
            }
        }
        thread = spawnThread(named: "console-input") { [self] in forward() }
    }

    /// Stops forwarding and restores the terminal.
    func stop() {
        wake.signal()
        if let thread { pthread_join(thread, nil) }
        thread = nil
        if var saved = savedTerminal {
            tcsetattr(STDIN_FILENO, TCSANOW, &saved)
            savedTerminal = nil
        }
    }

    private func forward() {
        var descriptors = [pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: wake.descriptor, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 256)
        var escaped = false
        var pending: [UInt8] = []
        while true {
            guard poll(&descriptors, 2, -1) >= 0 || errno == EINTR else { return }
            if descriptors[1].revents != 0 { return }
            let events = descriptors[0].revents
            if events & Int16(POLLNVAL) != 0 { return }
            guard events & Int16(POLLIN | POLLHUP) != 0 else { continue }
            let count = read(STDIN_FILENO, &buffer, buffer.count)
            if count <= 0 {
                if count < 0 && errno == EINTR { continue }
                return  // end of input: the guest keeps running without it
            }
            pending.removeAll(keepingCapacity: true)
            for byte in buffer[0..<count] {
                if escaped {
                    escaped = false
                    if byte == Self.quitKey {
                        quit()
                        return
                    }
                    pending.append(Self.escapeKey)
                    if byte != Self.escapeKey { pending.append(byte) }
                } else if byte == Self.escapeKey && savedTerminal != nil {
                    escaped = true
                } else {
                    pending.append(byte)
                }
            }
            deliver(pending)
        }
    }
}

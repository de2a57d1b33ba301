/// The debug-exit port (0x501, as QEMU's isa-debug-exit): the byte a guest writes there ends the VM with that byte as its exit status.
public final class DebugExit: BusDevice {
    public static let port: UInt64 = 0x501

    private let onExit: @Sendable (UInt8) -> Void

    /// - Parameter onExit: called with the byte the guest wrote.
    public init(onExit: @escaping @Sendable (UInt8) -> Void) {
        self.onExit = onExit
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0xFF }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard let status = data.first else { return }
        onExit(status)
    }
}

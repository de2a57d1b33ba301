/// The header in front of every virtio-vsock packet (VIRTIO 1.2 §5.10.6): 44 bytes, little-endian, packed.
public struct VsockHeader: Equatable, Sendable {
    /// Bytes of an encoded header.
    public static let size = 44

    /// Operations (`op`).
    public enum Operation {
        public static let request: UInt16 = 1
        public static let response: UInt16 = 2
        public static let reset: UInt16 = 3
        public static let shutdown: UInt16 = 4
        public static let readWrite: UInt16 = 5
        public static let creditUpdate: UInt16 = 6
        public static let creditRequest: UInt16 = 7
    }

    /// Socket types (`type`); Tern carries stream sockets only.
    public enum SocketType {
        public static let stream: UInt16 = 1
    }

    /// SHUTDOWN flags: what the sender will no longer do.
    public enum ShutdownFlag {
        /// The sender will receive no more data.
        public static let receive: UInt32 = 1
        /// The sender will send no more data.
        public static let send: UInt32 = 2
        /// Both.
        public static let both: UInt32 = 3
    }

    public var sourceCID: UInt64
    public var destinationCID: UInt64
    public var sourcePort: UInt32
    public var destinationPort: UInt32
    /// Payload bytes after the header.
    public var length: UInt32
    public var type: UInt16
    public var operation: UInt16
    public var flags: UInt32
    /// The sender's receive buffer for this connection (`buf_alloc`).
    public var bufferAllocation: UInt32
    /// Bytes the sender has consumed from that buffer since the connection opened (`fwd_cnt`, wrapping).
    public var forwardCount: UInt32

    public init(
        sourceCID: UInt64, destinationCID: UInt64, sourcePort: UInt32, destinationPort: UInt32, length: UInt32 = 0,
        type: UInt16 = SocketType.stream, operation: UInt16, flags: UInt32 = 0, bufferAllocation: UInt32 = 0,
        forwardCount: UInt32 = 0
    ) {
        self.sourceCID = sourceCID
        self.destinationCID = destinationCID
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.length = length
        self.type = type
        self.operation = operation
        self.flags = flags
        self.bufferAllocation = bufferAllocation
        self.forwardCount = forwardCount
    }

    /// Decodes the first `size` bytes of `bytes`, which must hold that many.
    public init(decoding bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count >= Self.size, "a vsock header needs \(Self.size) bytes, got \(bytes.count)")
        func field<T: FixedWidthInteger>(_ offset: Int) -> T {
            T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }
        sourceCID = field(0)
        destinationCID = field(8)
        sourcePort = field(16)
        destinationPort = field(20)
        length = field(24)
        type = field(28)
        operation = field(30)
        flags = field(32)
        bufferAllocation = field(36)
        forwardCount = field(40)
    }

    /// Encodes into the first `size` bytes of `bytes`, which must hold that many.
    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= Self.size, "a vsock header needs \(Self.size) bytes, got \(bytes.count)")
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        }
        put(sourceCID, 0)
        put(destinationCID, 8)
        put(sourcePort, 16)
        put(destinationPort, 20)
        put(length, 24)
        put(type, 28)
        put(operation, 30)
        put(flags, 32)
        put(bufferAllocation, 36)
        put(forwardCount, 40)
    }
}

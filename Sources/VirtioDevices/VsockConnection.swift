/// The ports of a connection: the host end's and the guest end's (the CIDs are fixed: the host's and the guest's).
struct VsockConnectionKey: Hashable {
    var hostPort: UInt32
    var guestPort: UInt32
}

/// One stream between a host socket and a guest socket, with the credit accounting of both directions
/// (VIRTIO 1.2 §5.10.6.3). Counters are free-running 32-bit values, compared with wrapping arithmetic.
struct VsockConnection {
    enum State: Equatable {
        /// Accepted from the host; its connect request has not arrived.
        case awaitingRequest
        /// Opened by the host: REQUEST is owed or sent, and the guest has not answered.
        case connecting
        /// Open. A guest-initiated connection is established once the host service accepted it.
        case established
        /// The host socket is closed and the RST owed to the guest is pending; the slot is freed once it is sent.
        case closing
    }

    /// Control packets owed to the guest.
    struct Pending: OptionSet {
        let rawValue: UInt8
        static let request = Self(rawValue: 1)
        static let response = Self(rawValue: 2)
        static let reset = Self(rawValue: 4)
        static let shutdown = Self(rawValue: 8)
        static let creditUpdate = Self(rawValue: 16)
        static let creditRequest = Self(rawValue: 32)
    }

    /// The host socket; -1 once closed.
    var socket: Int32
    var state: State
    /// The ports; meaningless while `awaitingRequest`.
    var key: VsockConnectionKey
    var pending: Pending = []

    // Host to guest.
    /// The guest's receive buffer for this connection (its last `buf_alloc`).
    var peerBufferAllocation: UInt32 = 0
    /// Bytes the guest has consumed (its last `fwd_cnt`).
    var peerForwardCount: UInt32 = 0
    /// Payload bytes sent to the guest.
    var sent: UInt32 = 0
    /// The host socket may have bytes to read (an edge was seen and reading has not hit EAGAIN since).
    var hostReadable = false
    /// The host socket reached end of stream; SHUTDOWN(SEND) is owed or sent.
    var hostEnded = false
    /// A CREDIT_REQUEST went out since the guest last gave credit.
    var creditRequested = false

    // Guest to host.
    /// Guest bytes the host socket has not taken.
    var toHost: VsockByteRing
    /// Bytes written to the host socket (`fwd_cnt`).
    var forwarded: UInt32 = 0
    /// `forwarded` as last told to the guest.
    var advertisedForwarded: UInt32 = 0
    /// SHUTDOWN flags the guest has sent.
    var guestShutdown: UInt32 = 0
    /// The host socket's sending side is shut (the guest will send nothing more).
    var hostWriteClosed = false

    init(socket: Int32, state: State, key: VsockConnectionKey, bufferSize: UInt32) {
        self.socket = socket
        self.state = state
        self.key = key
        toHost = VsockByteRing(capacity: Int(bufferSize))
    }

    /// Bytes the guest can take now: its buffer less what is in flight, zero when it shrank below that.
    var peerCredit: UInt32 {
        let inFlight = sent &- peerForwardCount
        return inFlight >= peerBufferAllocation ? 0 : peerBufferAllocation - inFlight
    }

    /// Takes the credit fields of a packet from the guest.
    mutating func updatePeerCredit(_ header: VsockHeader) {
        peerBufferAllocation = header.bufferAllocation
        peerForwardCount = header.forwardCount
        if peerCredit > 0 { creditRequested = false }
    }

    /// Whether host data should be read and sent to the guest as soon as it has credit.
    var wantsToSendData: Bool {
        state == .established && hostReadable && !hostEnded && guestShutdown & VsockHeader.ShutdownFlag.receive == 0
            && !pending.contains(.response)
    }

    /// Whether a packet for the guest is waiting: a control packet, or data the guest has credit for.
    var hasPacketForGuest: Bool {
        !pending.isEmpty || (wantsToSendData && peerCredit > 0)
    }
}

/// RST replies to guest packets that belong to no connection, kept in a small ring until receive buffers arrive.
/// When it is full the device stops taking guest packets, so a guest that withholds receive buffers only stalls
/// itself.
struct VsockResetReplies {
    /// The addresses of a reply: the guest packet's, swapped.
    struct Reply {
        var sourceCID: UInt64
        var sourcePort: UInt32
        var destinationPort: UInt32
    }

    private var replies: [Reply]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        replies = Array(repeating: Reply(sourceCID: 0, sourcePort: 0, destinationPort: 0), count: capacity)
    }

    var isEmpty: Bool { count == 0 }
    var isFull: Bool { count == replies.count }
    var first: Reply? { count == 0 ? nil : replies[head] }

    /// Queues a reply; the caller has checked `isFull`.
    mutating func append(_ reply: Reply) {
        precondition(!isFull, "reset reply ring is full")
        replies[(head + count) % replies.count] = reply
        count += 1
    }

    mutating func removeFirst() {
        precondition(count > 0, "reset reply ring is empty")
        head = (head + 1) % replies.count
        count -= 1
    }

    mutating func removeAll() {
        head = 0
        count = 0
    }
}

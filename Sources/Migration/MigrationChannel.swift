import Glibc

/// One end of a migration connection: a connected stream socket that sends and receives frames, with a time
/// limit on every wait so that a vanished peer is noticed rather than waited for forever.
public final class MigrationChannel: ByteSource, @unchecked Sendable {
    public let descriptor: Int32
    /// How long a read or write may wait for the peer.
    public let timeoutMilliseconds: Int32
    /// Bytes sent and received, frames included.
    public private(set) var bytesSent: UInt64 = 0
    public private(set) var bytesReceived: UInt64 = 0
    /// Index and bitmap of the batch being sent or received; allocated once.
    let scratch: UnsafeMutableRawBufferPointer
    /// One iovec for the headers and one per page of a batch.
    let vectors: UnsafeMutablePointer<iovec>

    /// Takes ownership of a connected stream socket, which it makes non-blocking.
    public init(descriptor: Int32, timeoutMilliseconds: Int32 = 10_000) {
        setNonBlocking(descriptor)
        self.descriptor = descriptor
        self.timeoutMilliseconds = timeoutMilliseconds
        scratch = .allocate(byteCount: FrameHeader.size + 8 + 9 * PageBatch.maximumPages, alignment: 8)
        vectors = .allocate(capacity: PageBatch.maximumPages + 1)
    }

    deinit {
        close(descriptor)
        scratch.deallocate()
        vectors.deallocate()
    }

    /// Connects to a destination that waits with `listen`.
    public static func connect(to address: MigrationAddress, timeoutMilliseconds: Int32 = 10_000) throws(MigrationError) -> MigrationChannel {
        let socket = try SocketAddress(address).connect(timeoutMilliseconds: timeoutMilliseconds)
        return MigrationChannel(descriptor: socket, timeoutMilliseconds: timeoutMilliseconds)
    }

    // MARK: Sending

    /// Sends one frame with `payload`.
    public func send(_ kind: FrameKind, _ payload: [UInt8] = []) throws(MigrationError) {
        FrameHeader(kind: kind, length: payload.count).encode(into: scratch)
        let sent: Result<Void, MigrationError> = payload.withUnsafeBytes { body in
            vectors[0] = iovec(iov_base: scratch.baseAddress, iov_len: FrameHeader.size)
            vectors[1] = iovec(iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress), iov_len: body.count)
            return Result { () throws(MigrationError) in try sendVectors(count: body.isEmpty ? 1 : 2) }
        }
        try sent.get()
    }

    /// Sends the pages of `region` (index `regionIndex`) listed in `pages` (increasing, at most
    /// `PageBatch.maximumPages`), zero pages as a bit, the others straight from guest memory without a copy.
    /// Returns how many were zero.
    @discardableResult
    public func sendPages(regionIndex: UInt32, region: MigrationRegion, pages: UnsafeBufferPointer<UInt64>) throws(MigrationError) -> Int {
        let count = pages.count
        precondition(count > 0 && count <= PageBatch.maximumPages)
        let indexStart = FrameHeader.size + 8
        let bitmapStart = indexStart + 8 * count
        let metadataEnd = bitmapStart + (count + 7) / 8
        for byte in bitmapStart..<metadataEnd { scratch[byte] = 0 }
        var zeroPages = 0
        var vectorCount = 1
        for (position, page) in pages.enumerated() {
            scratch.storeBytes(of: page.littleEndian, toByteOffset: indexStart + 8 * position, as: UInt64.self)
            let address = region.host.advanced(by: Int(page * PageBatch.pageSize))
            if PageBatch.isZero(address) {
                scratch[bitmapStart + position / 8] |= 1 << (position % 8)
                zeroPages += 1
            } else {
                vectors[vectorCount] = iovec(iov_base: address, iov_len: Int(PageBatch.pageSize))
                vectorCount += 1
            }
        }
        FrameHeader(kind: .pages, length: PageBatch.payloadLength(count: count, zeroPages: zeroPages)).encode(into: scratch)
        scratch.storeBytes(of: regionIndex.littleEndian, toByteOffset: FrameHeader.size, as: UInt32.self)
        scratch.storeBytes(of: UInt32(count).littleEndian, toByteOffset: FrameHeader.size + 4, as: UInt32.self)
        vectors[0] = iovec(iov_base: scratch.baseAddress, iov_len: metadataEnd)
        try sendVectors(count: vectorCount)
        return zeroPages
    }

    /// Writes `count` iovecs completely, waiting for the socket as needed.
    private func sendVectors(count: Int) throws(MigrationError) {
        var first = 0
        while first < count {
            var message = msghdr()
            message.msg_iov = vectors.advanced(by: first)
            message.msg_iovlen = count - first
            let sent = sendmsg(descriptor, &message, Int32(MSG_NOSIGNAL))
            if sent < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { try wait(for: Int16(POLLOUT), "sending"); continue }
                if errno == EPIPE || errno == ECONNRESET { throw .peerClosed }
                throw .socket("sending the migration stream", errno: errno)
            }
            bytesSent += UInt64(sent)
            var remaining = sent
            while first < count && remaining >= vectors[first].iov_len {
                remaining -= vectors[first].iov_len
                first += 1
            }
            if remaining > 0 {
                vectors[first].iov_base = vectors[first].iov_base.advanced(by: remaining)
                vectors[first].iov_len -= remaining
            }
        }
    }

    // MARK: Receiving

    /// Waits for the next frame's header.
    public func receiveHeader() throws(MigrationError) -> FrameHeader {
        let header = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<FrameHeader.size])
        try readExactly(into: header)
        return try FrameHeader(decoding: UnsafeRawBufferPointer(header))
    }

    /// Reads a frame's payload of `length` bytes.
    public func receivePayload(length: Int) throws(MigrationError) -> [UInt8] {
        var payload = [UInt8](repeating: 0, count: length)
        let received: Result<Void, MigrationError> = payload.withUnsafeMutableBytes { buffer in
            Result { () throws(MigrationError) in try readExactly(into: buffer) }
        }
        try received.get()
        return payload
    }

    /// Reads a `pages` frame's payload into `regions`; see `PageBatch.receive`.
    public func receivePages(length: Int, into regions: [MigrationRegion]) throws(MigrationError) -> (pages: Int, zero: Int) {
        var source = self
        return try PageBatch.receive(
            length: length, from: &source, into: regions,
            scratch: UnsafeMutableRawBufferPointer(rebasing: scratch[FrameHeader.size...]))
    }

    public func readExactly(into buffer: UnsafeMutableRawBufferPointer) throws(MigrationError) {
        var done = 0
        while done < buffer.count {
            let received = recv(descriptor, buffer.baseAddress!.advanced(by: done), buffer.count - done, 0)
            if received > 0 {
                done += received
                bytesReceived += UInt64(received)
            } else if received == 0 {
                throw .peerClosed
            } else if errno == EINTR {
                continue
            } else if errno == EAGAIN {
                try wait(for: Int16(POLLIN), "receiving")
            } else if errno == ECONNRESET {
                throw .peerClosed
            } else {
                throw .socket("receiving the migration stream", errno: errno)
            }
        }
    }

    /// Waits until the socket is ready for `events`, at most the channel's timeout.
    private func wait(for events: Int16, _ what: String) throws(MigrationError) {
        var poller = pollfd(fd: descriptor, events: events, revents: 0)
        while true {
            let ready = poll(&poller, 1, timeoutMilliseconds)
            if ready > 0 { return }
            if ready == 0 { throw .timedOut(what) }
            if errno != EINTR { throw .socket("waiting for the migration peer", errno: errno) }
        }
    }
}

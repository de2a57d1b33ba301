import Glibc
import GuestMemory
import Virtio

/// The result of one non-blocking socket transfer.
enum VsockSocketOutcome: Equatable {
    /// This many bytes moved.
    case transferred(Int)
    /// Nothing can move now; the descriptor will report readiness.
    case wouldBlock
    /// The peer closed its sending side (reads only).
    case endOfStream
    /// The socket failed with this errno.
    case failed(Int32)
}

/// Non-blocking scatter/gather I/O on host stream sockets, straight from and into guest buffers.
enum VsockSocketIO {
    /// Reads into `vectors`, whose total length must not be zero (a zero-length read would look like end of stream).
    static func read(_ descriptor: Int32, _ vectors: UnsafeMutableBufferPointer<iovec>) -> VsockSocketOutcome {
        while true {
            let count = readv(descriptor, vectors.baseAddress, Int32(vectors.count))
            if count > 0 { return .transferred(count) }
            if count == 0 { return .endOfStream }
            let error = errno
            if error == EINTR { continue }
            return error == EAGAIN || error == EWOULDBLOCK ? .wouldBlock : .failed(error)
        }
    }

    /// Writes `vectors` without raising SIGPIPE when the peer has gone.
    static func write(_ descriptor: Int32, _ vectors: UnsafeMutableBufferPointer<iovec>) -> VsockSocketOutcome {
        var message = msghdr()
        message.msg_iov = vectors.baseAddress
        message.msg_iovlen = vectors.count
        while true {
            let count = sendmsg(descriptor, &message, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            if count >= 0 { return .transferred(count) }
            let error = errno
            if error == EINTR { continue }
            return error == EAGAIN || error == EWOULDBLOCK ? .wouldBlock : .failed(error)
        }
    }

    /// Calls `body` with host views of bytes `[skip, skip + limit)` of the chain's segments `segments`, in
    /// order, and their total length; returns nil without calling it when a segment is not in guest RAM.
    /// The vectors live on the stack for the usual short chains.
    static func withVectors<R>(
        _ memory: GuestMemory, _ chain: DescriptorChain, segments: Range<Int>, skip: UInt64, limit: UInt64,
        _ body: (UnsafeMutableBufferPointer<iovec>, UInt64) -> R
    ) -> R? {
        withUnsafeTemporaryAllocation(of: iovec.self, capacity: max(segments.count, 1)) { vectors in
            var used = 0
            var toSkip = skip
            var total: UInt64 = 0
            for index in segments where total < limit {
                let segment = chain[index]
                let length = UInt64(segment.length)
                if toSkip >= length {
                    toSkip -= length
                    continue
                }
                let piece = min(length - toSkip, limit - total)
                guard let pointer = try? memory.pointer(at: segment.address + toSkip, length: piece) else { return nil }
                vectors[used] = iovec(iov_base: pointer, iov_len: Int(piece))
                used += 1
                total += piece
                toSkip = 0
            }
            return body(UnsafeMutableBufferPointer(rebasing: vectors[0..<used]), total)
        }
    }

    /// Copies `bytes` into the chain's segments `segments` from byte `skip` on; false when they do not hold
    /// that many bytes or a segment is not in guest RAM.
    static func scatter(
        _ bytes: UnsafeRawBufferPointer, into memory: GuestMemory, _ chain: DescriptorChain, segments: Range<Int>,
        skip: UInt64
    ) -> Bool {
        let copied = withVectors(memory, chain, segments: segments, skip: skip, limit: UInt64(bytes.count)) {
            vectors, total -> Bool in
            guard total == UInt64(bytes.count) else { return false }
            var offset = 0
            for vector in vectors {
                vector.iov_base.copyMemory(from: bytes.baseAddress! + offset, byteCount: vector.iov_len)
                offset += vector.iov_len
            }
            return true
        }
        return copied ?? false
    }

    /// Copies bytes `[skip, skip + buffer.count)` of the chain's segments `segments` into `buffer`; false when they
    /// do not hold that many bytes or a segment is not in guest RAM.
    static func gather(
        into buffer: UnsafeMutableRawBufferPointer, from memory: GuestMemory, _ chain: DescriptorChain,
        segments: Range<Int>, skip: UInt64
    ) -> Bool {
        let copied = withVectors(memory, chain, segments: segments, skip: skip, limit: UInt64(buffer.count)) {
            vectors, total -> Bool in
            guard total == UInt64(buffer.count) else { return false }
            var offset = 0
            for vector in vectors {
                (buffer.baseAddress! + offset).copyMemory(from: vector.iov_base, byteCount: vector.iov_len)
                offset += vector.iov_len
            }
            return true
        }
        return copied ?? false
    }
}

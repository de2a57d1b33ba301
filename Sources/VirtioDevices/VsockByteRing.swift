import Glibc

/// Guest bytes a host socket has not taken yet: a ring of at most `capacity` bytes. Its storage is allocated the
/// first time it has to hold anything (most connections never need it) and kept for the connection's life.
struct VsockByteRing {
    /// Most bytes the ring holds.
    let capacity: Int
    private var storage: [UInt8] = []
    /// Index of the oldest byte.
    private var head = 0
    /// Bytes held.
    private(set) var count = 0

    init(capacity: Int) {
        precondition(capacity > 0, "a ring needs room for at least one byte")
        self.capacity = capacity
    }

    var isEmpty: Bool { count == 0 }

    /// Appends `bytes`, which must fit in the space left.
    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count <= capacity - count, "\(bytes.count) bytes do not fit in \(capacity - count)")
        guard let source = bytes.baseAddress, !bytes.isEmpty else { return }
        if storage.isEmpty { storage = Array(repeating: 0, count: capacity) }
        let tail = (head + count) % capacity
        let first = min(bytes.count, capacity - tail)
        storage.withUnsafeMutableBytes { ring in
            (ring.baseAddress! + tail).copyMemory(from: source, byteCount: first)
            if first < bytes.count {
                ring.baseAddress!.copyMemory(from: source + first, byteCount: bytes.count - first)
            }
        }
        count += bytes.count
    }

    /// Writes as much as the socket takes, oldest bytes first, and drops what was written.
    mutating func writeOut(to descriptor: Int32) -> VsockSocketOutcome {
        guard count > 0 else { return .transferred(0) }
        let first = min(count, capacity - head)
        let outcome = storage.withUnsafeMutableBytes { ring in
            withUnsafeTemporaryAllocation(of: iovec.self, capacity: 2) { vectors in
                vectors[0] = iovec(iov_base: ring.baseAddress! + head, iov_len: first)
                vectors[1] = iovec(iov_base: ring.baseAddress!, iov_len: count - first)
                let used = first < count ? 2 : 1
                return VsockSocketIO.write(descriptor, UnsafeMutableBufferPointer(rebasing: vectors[0..<used]))
            }
        }
        if case .transferred(let written) = outcome {
            head = (head + written) % capacity
            count -= written
            if count == 0 { head = 0 }
        }
        return outcome
    }
}

import Glibc
import Qcow2
import Synchronization

/// The error a `FaultInjectingFile` fails with once its budget is spent.
public let injectedFault = DiskError.io("injected fault", errno: EIO)

/// Passes I/O through to another file until `limit` mutating operations (writes and
/// truncates) have completed, then fails every later one: a crash at that point.
public final class FaultInjectingFile: FileIO {
    public let base: any FileIO
    private let state: Mutex<(done: Int, limit: Int)>

    public init(_ base: any FileIO, failAfter limit: Int) {
        self.base = base
        self.state = Mutex((0, limit))
    }

    public var isWritable: Bool { base.isWritable }
    /// Mutating operations performed so far.
    public var operations: Int { state.withLock { $0.done } }

    private func admit() throws(DiskError) {
        let ok = state.withLock { s -> Bool in
            if s.done >= s.limit { return false }
            s.done += 1
            return true
        }
        if !ok { throw injectedFault }
    }

    public func pread(_ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(DiskError) {
        try base.pread(buffer, at: offset)
    }
    public func pwrite(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(DiskError) {
        try admit()
        try base.pwrite(buffer, at: offset)
    }
    public func size() throws(DiskError) -> UInt64 { try base.size() }
    public func truncate(_ size: UInt64) throws(DiskError) {
        try admit()
        try base.truncate(size)
    }
    public func sync() throws(DiskError) { try base.sync() }
    public func punchHole(at offset: UInt64, length: UInt64) {
        if (try? admit()) != nil { base.punchHole(at: offset, length: length) }
    }
    public func allocate(at offset: UInt64, length: UInt64) throws(DiskError) {
        try admit()
        try base.allocate(at: offset, length: length)
    }
}

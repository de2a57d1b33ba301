import Glibc
import Qcow2
import TestSupport
import Testing
@testable import VirtioDevices

@Suite struct ProbedRawRingTests {
    /// io_uring writes go straight to the file: a raw image whose format was probed stays on its backend, which
    /// refuses first-sector writes that would change the probed format.
    @Test func probedRawImagesStayOffTheRing() throws {
        let path = "\(Scratch.directory)/tern-probed-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { unlink(path) }
        try PosixFile(path: path, writable: true, create: true, exclusive: true).truncate(1 << 20)
        let probed = try openImage(path: path, writable: true)
        #expect((probed as? RawBackend)?.guardsFirstSector == true)
        #expect {
            _ = try BlockRingEngine(backend: probed, queueSize: 16, watcher: RecordingWatcher())
        } throws: { error in
            if case .notRawFile = error as? BlockRingError { return true }
            return false
        }
    }
}

import GuestMemory
import Virtio

/// The contents of balloon chains: page frame lists, free page reports and statistics buffers.
extension BalloonEngine {
    /// Most page frames one inflate or deflate chain may list (Linux sends at most 256), which bounds the work
    /// one chain costs.
    static let maximumFramesPerChain: UInt64 = 1 << 16
    /// Most bytes of a statistics buffer (64 entries; Linux sends 16 at most).
    static let maximumStatisticsLength: UInt64 = 64 * UInt64(BalloonStatistics.entrySize)

    /// Checks every page frame number in `chain` (le32, 4 KiB pages) and, for inflation, discards the pages,
    /// consecutive frames as one range. Returns false after failing the device.
    mutating func takePages(inflate: Bool) -> Bool {
        let name = inflate ? "inflate" : "deflate"
        guard chain.readableCount == chain.count else {
            return refuse("\(name) chain \(chain.head) has device-writable buffers")
        }
        guard chain.readableLength / 4 <= Self.maximumFramesPerChain else {
            return refuse("\(name) chain \(chain.head) lists more than \(Self.maximumFramesPerChain) pages")
        }
        var runStart: UInt64 = 0
        var runLength: UInt64 = 0
        for segment in chain {
            guard segment.length % 4 == 0 else {
                return refuse(
                    "\(name) chain \(chain.head) has a \(segment.length)-byte buffer, not whole 4-byte page frame numbers")
            }
            guard let frames = try? memory.pointer(at: segment.address, length: UInt64(segment.length)) else {
                return refuse("\(name) chain \(chain.head) has a buffer outside guest RAM")
            }
            for offset in stride(from: 0, to: Int(segment.length), by: 4) {
                let frame = UInt32(littleEndian: frames.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
                let address = UInt64(frame) * Balloon.pageSize
                guard memory.contains(address, length: Balloon.pageSize) else {
                    return refuse(
                        "\(name) chain \(chain.head): page frame 0x\(String(frame, radix: 16)) is outside guest RAM")
                }
                guard inflate else { continue }
                if runLength > 0 && address == runStart + runLength {
                    runLength += Balloon.pageSize
                } else {
                    discard(runStart, runLength)
                    runStart = address
                    runLength = Balloon.pageSize
                }
            }
        }
        discard(runStart, runLength)
        return true
    }

    /// Checks a free page report (every buffer a 4 KiB-aligned range of guest RAM) and discards the pages, unless
    /// the guest expects its free pages to hold a non-zero poison value. Returns false after failing the device.
    mutating func takeReport() -> Bool {
        for segment in chain {
            guard segment.address % Balloon.pageSize == 0, UInt64(segment.length) % Balloon.pageSize == 0 else {
                let range = "0x\(String(segment.address, radix: 16))+0x\(String(segment.length, radix: 16))"
                return refuse("reporting chain \(chain.head): range \(range) is not 4 KiB aligned")
            }
        }
        let keepsPoison = negotiated.contains(Balloon.Feature.pagePoison) && poisonValue != 0
        if !keepsPoison {
            for segment in chain { discard(segment.address, UInt64(segment.length)) }
        }
        return true
    }

    /// The statistics in `chain`; nil after failing the device.
    mutating func parseStatistics() -> BalloonStatistics? {
        let length = chain.readableLength
        guard chain.readableCount == chain.count, length % UInt64(BalloonStatistics.entrySize) == 0,
            length <= Self.maximumStatisticsLength
        else {
            fail(
                "statistics chain \(chain.head) is not up to 64 whole 10-byte entries the device can read (\(length) bytes)")
            return nil
        }
        let chain = self.chain
        let memory = self.memory
        let parsed = withUnsafeTemporaryAllocation(byteCount: Int(length), alignment: 8) {
            buffer -> BalloonStatistics? in
            var offset = 0
            for segment in chain where segment.length > 0 {
                guard let source = try? memory.pointer(at: segment.address, length: UInt64(segment.length)) else {
                    return nil
                }
                (buffer.baseAddress! + offset).copyMemory(from: source, byteCount: Int(segment.length))
                offset += Int(segment.length)
            }
            return BalloonStatistics(entries: UnsafeRawBufferPointer(buffer))
        }
        if parsed == nil { fail("statistics chain \(chain.head) has a buffer outside guest RAM") }
        return parsed
    }

    /// Gives the host back a validated range. A failure leaves the pages resident; it is the host's, not the
    /// guest's, so the device carries on.
    private func discard(_ address: UInt64, _ length: UInt64) {
        guard length > 0 else { return }
        try? memory.discard(guestAddress: address, length: length)
    }

    /// Fails the device with `reason`; returns false for the caller to pass on.
    private mutating func refuse(_ reason: String) -> Bool {
        fail(reason)
        return false
    }
}

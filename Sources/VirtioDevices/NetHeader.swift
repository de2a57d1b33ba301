/// The virtio-net header before every frame (VIRTIO 1.2 §5.1.6): flags (u8), gso_type (u8), hdr_len,
/// gso_size, csum_start, csum_offset and num_buffers (le16 each); 12 bytes with VIRTIO_F_VERSION_1.
enum NetHeader {
    static let length = 12
    /// The shortest frame worth passing on: an Ethernet header.
    static let minimumFrameLength = 14
    /// Offset of num_buffers.
    static let bufferCountOffset = 10
    /// VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum from csum_start is partial.
    static let needsChecksum: UInt8 = 1
    /// VIRTIO_NET_HDR_F_DATA_VALID: the checksums were verified.
    static let dataValid: UInt8 = 2
    /// VIRTIO_NET_HDR_GSO_NONE, _TCPV4 and _TCPV6.
    static let gsoNone: UInt8 = 0
    static let gsoTCPv4: UInt8 = 1
    static let gsoTCPv6: UInt8 = 4

    /// Whether a frame whose header from the backend is at `header` may go to a guest that accepted
    /// `accepted`, clearing the flags the guest did not negotiate (VIRTIO 1.2 §5.1.6.4.1).
    static func admit(_ header: UnsafeMutableRawPointer, accepted: NetOffloads) -> Bool {
        let flags = header.load(as: UInt8.self)
        let segmentation = header.load(fromByteOffset: 1, as: UInt8.self)
        if flags & needsChecksum != 0 && !accepted.contains(.checksum) { return false }
        switch segmentation {
        case gsoNone: break
        case gsoTCPv4: if !accepted.contains(.tcp4Segmentation) { return false }
        case gsoTCPv6: if !accepted.contains(.tcp6Segmentation) { return false }
        default: return false
        }
        let kept = accepted.contains(.checksum) ? flags & (needsChecksum | dataValid) : 0
        header.storeBytes(of: kept, as: UInt8.self)
        return true
    }
}

/// Host memory for one frame and its header, allocated once per device and reused for every frame.
final class NetFrameBuffer {
    let bytes: UnsafeMutableRawBufferPointer

    init(capacity: Int) {
        bytes = .allocate(byteCount: capacity, alignment: 16)
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { bytes.deallocate() }

    /// The buffer from `offset` on.
    func suffix(from offset: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: bytes[offset...])
    }

    /// Bytes `offset..<end`.
    func slice(_ offset: Int, _ end: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[offset..<end])
    }
}

/// A driver error that stops the device until reset; `reason` follows "virtio-net: " in the report.
struct NetFailure: Error {
    let reason: String
}

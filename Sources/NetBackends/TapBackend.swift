import Glibc
import VirtioDevices

/// A Linux tap interface: frames go to and come from the host kernel's network stack, where the interface can
/// be bridged, routed or NATed like any other.
///
/// The tap is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte virtio-net header, so frames cross
/// with the guest's own header and the kernel completes partial checksums and segments large TCP frames the
/// guest sends. Which offloads the kernel may use towards the guest follows what the guest accepted
/// (TUNSETOFFLOAD). The descriptor is non-blocking.
public final class TapBackend: NetBackend {
    /// The interface name, as the kernel reports it.
    public let name: String
    public let descriptor: Int32

    /// Linux `<linux/if_tun.h>` values, which Swift cannot import (the request numbers are macros).
    private enum Tun {
        static let setInterface: UInt = 0x4004_54CA  // TUNSETIFF, _IOW('T', 202, int)
        static let setOffload: UInt = 0x4004_54D0  // TUNSETOFFLOAD, _IOW('T', 208, unsigned int)
        static let setHeaderSize: UInt = 0x4004_54D8  // TUNSETVNETHDRSZ, _IOW('T', 216, int)
        static let tap: Int16 = 0x0002  // IFF_TAP
        static let noPacketInformation: Int16 = 0x1000  // IFF_NO_PI
        static let virtioHeader: Int16 = 0x4000  // IFF_VNET_HDR
        static let checksum: UInt32 = 0x01  // TUN_F_CSUM
        static let tso4: UInt32 = 0x02  // TUN_F_TSO4
        static let tso6: UInt32 = 0x04  // TUN_F_TSO6
    }

    /// The longest interface name (IFNAMSIZ less the terminating zero).
    public static let maximumNameLength = 15

    /// Attaches to the tap interface `name`, creating it when it does not exist and the process may
    /// (CAP_NET_ADMIN); a created interface goes away when the backend does.
    public init(name: String) throws(TapError) {
        guard Self.isValidName(name) else {
            throw TapError(
                "tap name '\(name)' must be 1 to \(Self.maximumNameLength) characters without '/', ':' or whitespace")
        }
        let descriptor = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard descriptor >= 0 else {
            let error = errno
            switch error {
            case ENOENT:
                throw TapError("tap \(name): /dev/net/tun does not exist; load the tun module with `modprobe tun`")
            case EACCES, EPERM:
                throw TapError(
                    "tap \(name): cannot open /dev/net/tun (\(Self.describe(error))); run as root or make the device accessible to your user")
            default:
                throw TapError("tap \(name): cannot open /dev/net/tun: \(Self.describe(error))")
            }
        }
        var request = ifreq()
        withUnsafeMutableBytes(of: &request) { bytes in
            bytes.copyBytes(from: name.utf8)
            bytes.storeBytes(of: Tun.tap | Tun.noPacketInformation | Tun.virtioHeader, toByteOffset: 16, as: Int16.self)
        }
        guard ioctl(descriptor, Tun.setInterface, &request) == 0 else {
            let error = errno
            close(descriptor)
            switch error {
            case EPERM:
                throw TapError(
                    "tap \(name): not allowed to create or attach to it; create it for your user with `ip tuntap add \(name) mode tap user $USER`, or run as root")
            case EBUSY:
                throw TapError("tap \(name) is attached to another process; each tap serves one VM")
            case EINVAL:
                throw TapError(
                    "tap \(name) exists but is not a single-queue tap; recreate it with `ip tuntap add \(name) mode tap`")
            default:
                throw TapError("tap \(name): cannot attach (TUNSETIFF): \(Self.describe(error))")
            }
        }
        var headerSize = Int32(12)
        guard ioctl(descriptor, Tun.setHeaderSize, &headerSize) == 0 else {
            let error = errno
            close(descriptor)
            throw TapError(
                "tap \(name): the kernel refused a 12-byte virtio-net header (TUNSETVNETHDRSZ: \(Self.describe(error)))")
        }
        self.name = withUnsafeBytes(of: &request) { bytes in
            String(decoding: bytes.prefix(16).prefix { $0 != 0 }, as: UTF8.self)
        }
        self.descriptor = descriptor
        setReceiveOffloads([])
    }

    deinit { close(descriptor) }

    public var offloads: NetOffloads { [.checksum, .tcp4Segmentation, .tcp6Segmentation] }

    public func send(_ frame: UnsafeRawBufferPointer) throws(NetBackendError) {
        while write(descriptor, frame.baseAddress, frame.count) < 0 {
            let error = errno
            if error == EINTR { continue }
            if error == EAGAIN { throw .wouldBlock }
            throw .failed("tap \(name): write: \(Self.describe(error))")
        }
    }

    /// Reads one frame; nil when none waits, or when the tap fails (a deleted interface), which a later
    /// readiness event retries.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        while true {
            let count = read(descriptor, buffer.baseAddress, buffer.count)
            if count > 0 { return count }
            if count == 0 || errno != EINTR { return nil }
        }
    }

    /// TUNSETOFFLOAD: the kernel may hand the guest partial checksums and large TCP frames only as accepted.
    public func setReceiveOffloads(_ offloads: NetOffloads) {
        var flags: UInt32 = 0
        if offloads.contains(.checksum) {
            flags |= Tun.checksum
            if offloads.contains(.tcp4Segmentation) { flags |= Tun.tso4 }
            if offloads.contains(.tcp6Segmentation) { flags |= Tun.tso6 }
        }
        // Refused only by kernels without offload support, which then send plain frames.
        _ = ioctl(descriptor, Tun.setOffload, Int32(bitPattern: flags))
    }

    /// Whether `name` can name a network interface.
    public static func isValidName(_ name: String) -> Bool {
        (1...maximumNameLength).contains(name.utf8.count)
            && !name.utf8.contains { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7F }
    }

    private static func describe(_ error: Int32) -> String { String(cString: strerror(error)) }
}

/// Why a tap interface could not be used; the description names the problem and the fix.
public struct TapError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) { self.description = description }
}

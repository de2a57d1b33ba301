import Glibc

/// A firmware image (a SeaBIOS build) read from a file into host memory that stays put for the VM's life: KVM
/// maps it read-only just below 4 GiB, where the reset vector (0xFFFFFFF0) lands in its last 16 bytes.
public final class FirmwareImage: Sendable {
    /// Debian's SeaBIOS (package `seabios`), as QEMU's q35 and i440fx machines load it.
    public static let seaBIOSPath = "/usr/share/seabios/bios-256k.bin"
    /// Images are whole 64 KiB blocks (as QEMU requires) of at most 256 KiB, which keeps them above the pages KVM
    /// reserves at 0xFFFBC000 for the real-mode TSS and identity map.
    public static let blockSize = 64 << 10
    public static let maximumSize = 256 << 10
    /// The legacy BIOS area below 1 MiB that firmware runs from once it has copied itself there.
    public static let shadowEnd: UInt64 = 0x10_0000
    public static let shadowStart: UInt64 = 0xC_0000

    /// Why an image cannot be used.
    public enum ImageError: Error, Equatable, CustomStringConvertible {
        case unreadable(path: String, errno: Int32)
        case badSize(path: String, size: Int)

        public var description: String {
            switch self {
            case .unreadable(let path, let errno):
                "firmware \(path): \(String(cString: strerror(errno)))"
            case .badSize(let path, let size):
                "firmware \(path): \(size) bytes; an image is 64 to 256 KiB in whole 64 KiB blocks"
            }
        }
    }

    public let path: String
    public let size: Int
    /// Page-aligned, private memory holding the image; unmapped when the image goes away.
    public nonisolated(unsafe) let bytes: UnsafeMutableRawPointer

    /// Reads the image at `path`.
    public init(path: String) throws(ImageError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .unreadable(path: path, errno: errno) }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw .unreadable(path: path, errno: errno) }
        let size = Int(status.st_size)
        guard size > 0, size % Self.blockSize == 0, size <= Self.maximumSize else { throw .badSize(path: path, size: size) }
        guard let mapping = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), mapping != MAP_FAILED else {
            throw .unreadable(path: path, errno: errno)
        }
        var done = 0
        while done < size {
            let count = pread(fd, mapping + done, size - done, off_t(done))
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                let error = count == 0 ? EIO : errno
                munmap(mapping, size)
                throw .unreadable(path: path, errno: error)
            }
            done += count
        }
        self.path = path
        self.size = size
        bytes = mapping
    }

    deinit {
        munmap(bytes, size)
    }

    /// Where the image sits below 4 GiB.
    public var highAddress: UInt64 { (1 << 32) - UInt64(size) }

    /// The part of the image that belongs in the BIOS area below 1 MiB: its last `min(size, 256 KiB)` bytes, ending
    /// at 1 MiB. On q35 and i440fx, SeaBIOS copies this itself through the chipset's PAM shadowing (its
    /// src/fw/shadow.c); Tern has RAM there instead of PAM registers, so it is copied before the guest starts.
    public var shadow: (address: UInt64, bytes: UnsafeRawBufferPointer) {
        let length = min(size, Int(Self.shadowEnd - Self.shadowStart))
        return (Self.shadowEnd - UInt64(length), UnsafeRawBufferPointer(start: bytes + (size - length), count: length))
    }
}

import CKVM
import Glibc

/// Why a guest-memory operation failed.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible {
    /// The range `[address, address + length)` is not entirely inside one RAM region.
    case outOfRange(address: UInt64, length: UInt64)
    /// The requested size cannot be backed (too small, unaligned or too large for the host).
    case invalidSize(UInt64, reason: String)
    /// Creating or mapping the backing memory failed.
    case backingFailed(operation: String, errno: Int32)
    /// A range to discard does not start and end on a 4 KiB page boundary.
    case unaligned(address: UInt64, length: UInt64)
    /// The host refused to release the pages of a range.
    case discardFailed(address: UInt64, length: UInt64, errno: Int32)

    public var description: String {
        switch self {
        case .outOfRange(let address, let length):
            return "guest address range 0x\(String(address, radix: 16))+0x\(String(length, radix: 16)) is outside guest RAM"
        case .invalidSize(let size, let reason):
            return "guest memory size \(size) bytes: \(reason)"
        case .backingFailed(let operation, let errno):
            return "cannot back guest memory: \(operation): \(String(cString: strerror(errno)))"
        case .unaligned(let address, let length):
            return "guest address range 0x\(String(address, radix: 16))+0x\(String(length, radix: 16)) is not 4 KiB aligned"
        case .discardFailed(let address, let length, let errno):
            return "cannot discard guest range 0x\(String(address, radix: 16))+0x\(String(length, radix: 16)): \(String(cString: strerror(errno)))"
        }
    }
}

/// A contiguous run of guest RAM, backed by one host mapping.
public struct MemoryRegion: Sendable, Equatable {
    /// First guest-physical address.
    public let guestAddress: UInt64
    /// Length in bytes.
    public let size: UInt64
    /// Offset of this region inside the backing memfd (for anonymous memory, inside guest RAM as a whole).
    public let fileOffset: UInt64
    /// Host address of the mapping; shared with KVM.
    public nonisolated(unsafe) let host: UnsafeMutableRawPointer

    /// One past the last guest-physical address.
    public var end: UInt64 { guestAddress + size }

    public static func == (lhs: MemoryRegion, rhs: MemoryRegion) -> Bool {
        lhs.guestAddress == rhs.guestAddress && lhs.size == rhs.size && lhs.fileOffset == rhs.fileOffset && lhs.host == rhs.host
    }
}

/// How guest RAM is laid out around the 32-bit MMIO hole, without allocating anything.
public struct MemoryLayout32: Sendable, Equatable {
    /// Start of the 32-bit MMIO hole (device registers, LAPIC, IOAPIC, PCI windows).
    public static let mmioHoleStart: UInt64 = 0xC000_0000
    /// End of the 32-bit MMIO hole, where high RAM resumes.
    public static let mmioHoleEnd: UInt64 = 0x1_0000_0000

    /// (guest address, size) of each RAM range for `size` bytes of RAM.
    public static func ranges(forSize size: UInt64) -> [(guestAddress: UInt64, size: UInt64)] {
        if size <= mmioHoleStart { return [(0, size)] }
        return [(0, mmioHoleStart), (mmioHoleEnd, size - mmioHoleStart)]
    }
}

/// Options for backing guest RAM.
public struct MemoryOptions: Sendable, Equatable {
    /// Let KSM merge identical pages across guests (MADV_MERGEABLE). KSM scans only anonymous private memory,
    /// so mergeable RAM is mapped MAP_PRIVATE | MAP_ANONYMOUS instead of from a memfd.
    public var mergeable: Bool
    /// Ask for transparent huge pages (MADV_HUGEPAGE).
    public var hugePages: Bool

    public init(mergeable: Bool = false, hugePages: Bool = false) {
        self.mergeable = mergeable
        self.hugePages = hugePages
    }
}

/// How guest RAM mapped from an existing file is shared with that file.
public enum MemorySharing: Sendable, Equatable {
    /// MAP_PRIVATE: the guest starts from the file's contents, read in lazily as pages are first touched; its writes
    /// stay in this process (a snapshot's memory file is never changed by the VM restored from it).
    case privateCopy
    /// MAP_SHARED: the guest's RAM is the file (a memfd another process handed over); writes go to it.
    case shared
}

/// Guest RAM, split into regions around the MMIO hole: a shared memfd mapping, or anonymous private memory when
/// it is mergeable (KSM scans nothing else). Every access is bounds-checked.
///
/// The memory is shared with the guest, which may change it at any time, so reads copy values out and never
/// hand out references that assume the contents stay put.
public final class GuestMemory: Sendable {
    /// Smallest guest RAM Tern accepts.
    public static let minimumSize: UInt64 = 2 << 20

    /// The RAM regions, in ascending guest-address order.
    public let regions: [MemoryRegion]
    /// Total RAM in bytes.
    public let size: UInt64
    /// The memfd or file backing all regions, owned (closed at deinit); nil for anonymous memory.
    let fileDescriptor: Int32?
    /// How the regions share `fileDescriptor`.
    let sharing: MemorySharing
    /// The pages the VMM itself writes while tracking is on.
    public let writtenPages: WrittenPages

    /// Creates `size` bytes of zeroed guest RAM.
    public convenience init(size: UInt64, options: MemoryOptions = MemoryOptions()) throws(GuestMemoryError) {
        try Self.check(size)
        var fd: Int32?
        if !options.mergeable {
            let created = ckvm_memfd_create("tern-guest-ram")
            guard created >= 0 else { throw .backingFailed(operation: "memfd_create", errno: errno) }
            guard ftruncate(created, off_t(size)) == 0 else {
                let error = errno
                close(created)
                throw .backingFailed(operation: "ftruncate", errno: error)
            }
            fd = created
        }
        try self.init(size: size, descriptor: fd, sharing: .shared, options: options)
    }

    /// Maps `size` bytes of existing guest RAM from `descriptor` (a memory file written by a snapshot, or a memfd),
    /// laid out around the MMIO hole as `init(size:)` lays it out. The memory takes ownership of `descriptor`: it is
    /// closed when the memory goes away, or at once if this fails. Nothing is read until the guest touches it.
    public convenience init(
        adopting descriptor: Int32, size: UInt64, sharing: MemorySharing, hugePages: Bool = false
    ) throws(GuestMemoryError) {
        do throws(GuestMemoryError) {
            try Self.check(size)
            var status = stat()
            guard fstat(descriptor, &status) == 0 else { throw .backingFailed(operation: "fstat", errno: errno) }
            guard UInt64(status.st_size) >= size else {
                throw .invalidSize(size, reason: "the backing file holds only \(status.st_size) bytes")
            }
        } catch {
            close(descriptor)
            throw error
        }
        try self.init(size: size, descriptor: descriptor, sharing: sharing, options: MemoryOptions(hugePages: hugePages))
    }

    private static func check(_ size: UInt64) throws(GuestMemoryError) {
        guard size >= Self.minimumSize else {
            throw .invalidSize(size, reason: "at least \(Self.minimumSize >> 20) MiB is needed")
        }
        guard size % 4096 == 0 else { throw .invalidSize(size, reason: "must be a multiple of 4 KiB") }
        guard size <= 1 << 46 else { throw .invalidSize(size, reason: "larger than the 64 TiB Tern supports") }
    }

    /// Maps the regions from `fd` (owned; closed on failure) or anonymous memory.
    private init(size: UInt64, descriptor fd: Int32?, sharing: MemorySharing, options: MemoryOptions) throws(GuestMemoryError) {
        var regions: [MemoryRegion] = []
        var offset: UInt64 = 0
        for range in MemoryLayout32.ranges(forSize: size) {
            let mapping = if let fd {
                mmap(nil, Int(range.size), PROT_READ | PROT_WRITE, (sharing == .shared ? MAP_SHARED : MAP_PRIVATE) | MAP_NORESERVE,
                     fd, off_t(offset))
            } else {
                mmap(nil, Int(range.size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            }
            guard let mapping, mapping != MAP_FAILED else {
                let error = errno
                for region in regions { munmap(region.host, Int(region.size)) }
                if let fd { close(fd) }
                throw .backingFailed(operation: "mmap", errno: error)
            }
            if options.mergeable && madvise(mapping, Int(range.size), MADV_MERGEABLE) != 0 {
                let error = errno
                munmap(mapping, Int(range.size))
                for region in regions { munmap(region.host, Int(region.size)) }
                throw .backingFailed(operation: "madvise(MADV_MERGEABLE)", errno: error)
            }
            if options.hugePages { _ = madvise(mapping, Int(range.size), MADV_HUGEPAGE) }
            regions.append(MemoryRegion(guestAddress: range.guestAddress, size: range.size, fileOffset: offset, host: mapping))
            offset += range.size
        }
        self.regions = regions
        self.size = size
        fileDescriptor = fd
        self.sharing = sharing
        writtenPages = WrittenPages(bytes: size)
    }

    deinit {
        for region in regions { munmap(region.host, Int(region.size)) }
        if let fileDescriptor { close(fileDescriptor) }
    }

    /// The host pointer for `[address, address + length)`, which must lie inside one region. While
    /// `writtenPages` is tracking, the range counts as written: devices reach guest RAM only through here.
    @inline(__always)
    public func pointer(at address: UInt64, length: UInt64) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        for region in regions where address >= region.guestAddress {
            let offset = address - region.guestAddress
            if offset < region.size && length <= region.size - offset {
                writtenPages.mark(offset: region.fileOffset + offset, length: length)
                return region.host.advanced(by: Int(offset))
            }
        }
        throw .outOfRange(address: address, length: length)
    }

    /// Records `[address, address + length)` as written by the VMM, for memory written through a pointer taken
    /// earlier (a virtqueue's used ring). Costs one atomic load while `writtenPages` is not tracking.
    @inline(__always)
    public func noteWritten(at address: UInt64, length: UInt64) {
        guard writtenPages.isTracking else { return }
        for region in regions where address >= region.guestAddress && address - region.guestAddress < region.size {
            writtenPages.mark(offset: region.fileOffset + address - region.guestAddress, length: length)
        }
    }

    /// Whether `[address, address + length)` lies inside one RAM region.
    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        (try? pointer(at: address, length: length)) != nil
    }

    /// Copies `bytes` into guest memory at `address`.
    public func write(_ bytes: UnsafeRawBufferPointer, at address: UInt64) throws(GuestMemoryError) {
        let destination = try pointer(at: address, length: UInt64(bytes.count))
        if let base = bytes.baseAddress { destination.copyMemory(from: base, byteCount: bytes.count) }
    }

    /// Copies `bytes` into guest memory at `address`.
    public func write(_ bytes: [UInt8], at address: UInt64) throws(GuestMemoryError) {
        let destination = try pointer(at: address, length: UInt64(bytes.count))
        bytes.withUnsafeBytes { buffer in
            if let base = buffer.baseAddress { destination.copyMemory(from: base, byteCount: buffer.count) }
        }
    }

    /// Copies guest memory at `address` into `buffer`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at address: UInt64) throws(GuestMemoryError) {
        let source = try pointer(at: address, length: UInt64(buffer.count))
        if let base = buffer.baseAddress { base.copyMemory(from: source, byteCount: buffer.count) }
    }

    /// `count` bytes of guest memory at `address`.
    public func bytes(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        let source = try pointer(at: address, length: UInt64(count))
        return Array(UnsafeRawBufferPointer(start: source, count: count))
    }

    /// Reads a little-endian integer at `address` (any alignment).
    @inline(__always)
    public func load<T: FixedWidthInteger>(_: T.Type = T.self, at address: UInt64) throws(GuestMemoryError) -> T {
        T(littleEndian: try pointer(at: address, length: UInt64(MemoryLayout<T>.size)).loadUnaligned(as: T.self))
    }

    /// Writes a little-endian integer at `address` (any alignment).
    @inline(__always)
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        try pointer(at: address, length: UInt64(MemoryLayout<T>.size)).storeBytes(of: value.littleEndian, as: T.self)
    }

    /// Bytes of guest RAM that are resident on the host: what the guest (and the loader) has touched.
    public func residentBytes() -> UInt64 {
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        var total: UInt64 = 0
        for region in regions {
            let pages = Int((region.size + page - 1) / page)
            var vector = [UInt8](repeating: 0, count: pages)
            guard mincore(region.host, Int(region.size), &vector) == 0 else { continue }
            total += UInt64(vector.reduce(0) { $0 + Int($1 & 1) }) * page
        }
        return total
    }

    /// Size of the pages `discard(guestAddress:length:)` works in.
    public static let discardPageSize: UInt64 = 4096

    /// Gives the host back the pages of `[guestAddress, guestAddress + length)`, which must lie inside one region
    /// and start and end on a 4 KiB boundary. The range is punched out of the memfd (MADV_REMOVE), or dropped from
    /// anonymous memory (MADV_DONTNEED), so the host's resident memory drops; the pages read as zero afterwards and
    /// are faulted in again when touched. (In a private copy of a file they read as the file's contents again.)
    public func discard(guestAddress: UInt64, length: UInt64) throws(GuestMemoryError) {
        guard guestAddress % Self.discardPageSize == 0, length % Self.discardPageSize == 0 else {
            throw .unaligned(address: guestAddress, length: length)
        }
        let host = try pointer(at: guestAddress, length: length)
        guard length > 0 else { return }
        let advice = fileDescriptor != nil && sharing == .shared ? MADV_REMOVE : MADV_DONTNEED
        guard madvise(host, Int(length), advice) == 0 else {
            throw .discardFailed(address: guestAddress, length: length, errno: errno)
        }
    }

    /// Zeroes `[address, address + length)`.
    public func zero(at address: UInt64, length: UInt64) throws(GuestMemoryError) {
        memset(try pointer(at: address, length: length), 0, Int(length))
    }
}

import Glibc

/// A read-only, private mapping of a whole file, unmapped when the value goes away.
public struct MappedFile: ~Copyable {
    public let path: String
    public let bytes: UnsafeRawBufferPointer

    /// Maps `path`; errors name the file and what went wrong.
    public init(path: String) throws(BootError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BootError(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw BootError(path: path, reason: String(cString: strerror(errno))) }
        guard status.st_mode & S_IFMT == S_IFREG else { throw BootError(path: path, reason: "not a regular file") }
        guard status.st_size > 0 else { throw BootError(path: path, reason: "the file is empty") }
        let size = Int(status.st_size)
        let mapping = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let mapping, mapping != MAP_FAILED else { throw BootError(path: path, reason: String(cString: strerror(errno))) }
        bytes = UnsafeRawBufferPointer(start: mapping, count: size)
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: bytes.baseAddress), bytes.count)
    }
}

/// A boot input (kernel, initrd) that could not be used, with the file it concerns.
public struct BootError: Error, Equatable, CustomStringConvertible {
    public let path: String
    public let reason: String

    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    public var description: String { "\(path): \(reason)" }
}

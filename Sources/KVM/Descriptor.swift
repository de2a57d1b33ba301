import Glibc

/// An owned file descriptor, closed exactly once when its owner goes away.
public struct Descriptor: ~Copyable, @unchecked Sendable {
    /// The raw descriptor number, valid for as long as this value lives.
    public let raw: Int32

    /// Takes ownership of `raw`.
    public init(owning raw: Int32) {
        self.raw = raw
    }

    deinit {
        close(raw)
    }
}

/// Issues an ioctl with an integer argument, retrying on EINTR. Returns the result or throws with `name`.
@inline(__always)
func ioctlValue(_ fd: Int32, _ request: UInt, _ value: Int32 = 0, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
    while true {
        let result = ioctl(fd, request, value)
        if result >= 0 { return result }
        if errno == EINTR { continue }
        throw .ioctlFailed(name(), errno: errno)
    }
}

/// Issues an ioctl with a pointer argument, retrying on EINTR. Returns the result or throws with `name`.
@inline(__always)
func ioctlPointer(_ fd: Int32, _ request: UInt, _ pointer: UnsafeMutableRawPointer, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
    let result = retryingIoctl(fd, request, pointer)
    if result < 0 { throw .ioctlFailed(name(), errno: errno) }
    return result
}

/// Issues an ioctl whose argument is a value of type `T`, passed by address.
@inline(__always)
func ioctlStruct<T>(_ fd: Int32, _ request: UInt, _ value: inout T, _ name: @autoclosure () -> String) throws(KVMError) {
    let result = withUnsafeMutablePointer(to: &value) { retryingIoctl(fd, request, UnsafeMutableRawPointer($0)) }
    if result < 0 { throw .ioctlFailed(name(), errno: errno) }
}

/// Reads one kernel structure of type `T` through `request` into a byte image of exactly its size.
func ioctlImage<T>(_ fd: Int32, _ request: UInt, of type: T.Type, _ name: @autoclosure () -> String) throws(KVMError) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: MemoryLayout<T>.size)
    let result = bytes.withUnsafeMutableBytes { retryingIoctl(fd, request, $0.baseAddress!) }
    if result < 0 { throw .ioctlFailed(name(), errno: errno) }
    return bytes
}

/// Passes a byte image of a kernel structure to `request`.
func ioctlLoad(_ fd: Int32, _ request: UInt, _ image: [UInt8], _ name: @autoclosure () -> String) throws(KVMError) {
    var bytes = image
    let result = bytes.withUnsafeMutableBytes { retryingIoctl(fd, request, $0.baseAddress!) }
    if result < 0 { throw .ioctlFailed(name(), errno: errno) }
}

/// ioctl with a pointer argument, retried on EINTR; returns its result, leaving errno set on failure.
@inline(__always)
func retryingIoctl(_ fd: Int32, _ request: UInt, _ pointer: UnsafeMutableRawPointer) -> Int32 {
    while true {
        let result = ioctl(fd, request, pointer)
        if result >= 0 || errno != EINTR { return result }
    }
}

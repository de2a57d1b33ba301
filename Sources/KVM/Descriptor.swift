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
    while true {
        let result = ioctl(fd, request, pointer)
        if result >= 0 { return result }
        if errno == EINTR { continue }
        throw .ioctlFailed(name(), errno: errno)
    }
}

/// Issues an ioctl whose argument is a value of type `T`, passed by address.
@inline(__always)
func ioctlStruct<T>(_ fd: Int32, _ request: UInt, _ value: inout T, _ name: @autoclosure () -> String) throws(KVMError) {
    let result: Int32 = withUnsafeMutablePointer(to: &value) { pointer in
        while true {
            let result = ioctl(fd, request, UnsafeMutableRawPointer(pointer))
            if result >= 0 || errno != EINTR { return result }
        }
    }
    if result < 0 { throw .ioctlFailed(name(), errno: errno) }
}

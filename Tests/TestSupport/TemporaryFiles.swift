import Glibc

/// Writes `bytes` to a fresh temporary file and returns its path.
public func temporaryFile(_ bytes: [UInt8], name: String = "file") -> String {
    var template = Array("/tmp/tern-test-\(name)-XXXXXX".utf8CString)
    let fd = mkstemp(&template)
    precondition(fd >= 0, "mkstemp failed")
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    precondition(written == bytes.count, "short write to a temporary file")
    close(fd)
    return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}

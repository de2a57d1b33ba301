// libFuzzer target: kernel image parsing (ELF64 program headers and notes, the bzImage setup header).
// Every input must be either accepted or refused with an ImageFormatError; none may crash or read out of bounds.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    if let image = try? ELFImage(parsing: bytes) {
        // Accepted segments must lie inside the input.
        for segment in image.segments {
            precondition(segment.fileOffset + segment.fileSize <= UInt64(size))
            precondition(segment.fileSize <= segment.memorySize)
        }
    }
    if SetupHeader.matches(bytes), let header = try? SetupHeader(parsing: bytes) {
        precondition(header.protectedModeOffset < size)
        precondition(header.end <= size)
        let payloadEnd = UInt64(header.protectedModeOffset) + UInt64(header.payloadOffset) + UInt64(header.payloadLength)
        precondition(payloadEnd <= UInt64(size))
    }
    _ = SetupHeader.kernelRelease(bytes)
    return 0
}

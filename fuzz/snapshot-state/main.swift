import KVM

/// libFuzzer entry point: decodes the bytes as a state file and every section as each record type Tern restores.
/// Any input must end in a decoded state or a StateError, never a trap, a hang or an oversized allocation.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStateFile(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let file = try? StateFile(decoding: bytes) else {
        // Sections are also reached without the container's checksum, as a migration stream delivers them.
        var reader = StateReader(bytes, context: "fuzz input")
        _ = try? VCPUState.decode(from: &reader, version: 1)
        reader = StateReader(bytes, context: "fuzz input")
        _ = try? VMState.decode(from: &reader, version: 1)
        return 0
    }
    _ = try? file.records(VCPUState.self)
    _ = try? file.records(VMState.self)
    _ = file.encoded()
    return 0
}

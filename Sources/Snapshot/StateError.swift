/// Why a state file or stream could not be read. Each case renders as one line naming the problem.
public enum StateError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The bytes do not start with the state file's magic.
    case notAStateFile
    /// The file was written by a newer format than this Tern reads.
    case unsupportedFormatVersion(UInt32)
    /// The file ends before what its header or a section says it holds.
    case truncated(String)
    /// The checksum does not match the bytes: the file was damaged after it was written.
    case checksumMismatch(expected: UInt32, actual: UInt32)
    /// A section holds a record version this Tern does not read.
    case unsupportedRecordVersion(tag: String, version: UInt32)
    /// A section's content does not describe a valid record.
    case malformed(String)
    /// A record the state needs is absent.
    case missingRecord(tag: String, instance: UInt32)
    /// The state was captured on a host whose CPU offers what this host's does not.
    case incompatibleHost(String)

    public var description: String {
        switch self {
        case .notAStateFile:
            return "not a Tern state file (bad magic)"
        case .unsupportedFormatVersion(let version):
            return "state format version \(version) is newer than this Tern reads (\(StateFile.formatVersion)); restore it with the Tern that wrote it or a later one"
        case .truncated(let what):
            return "the state is truncated: \(what)"
        case .checksumMismatch(let expected, let actual):
            return "the state is corrupt: checksum 0x\(String(actual, radix: 16)) where 0x\(String(expected, radix: 16)) was written"
        case .unsupportedRecordVersion(let tag, let version):
            return "the state's \(tag) record has version \(version), which this Tern does not read"
        case .malformed(let what):
            return "the state is malformed: \(what)"
        case .missingRecord(let tag, let instance):
            return "the state has no \(tag) record for instance \(instance)"
        case .incompatibleHost(let what):
            return "the state cannot run on this host: \(what)"
        }
    }
}

import ArgumentParser
import Qcow2
#if canImport(Glibc)
import Glibc
#endif

/// `tern image`: create, inspect, check and convert qcow2 and raw disk images.
struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Create, inspect, check and convert qcow2 and raw disk images.",
        subcommands: [
            ImageCreate.self, ImageInfo.self, ImageCheck.self, ImageConvert.self, ImageSnapshot.self,
            ImageCommit.self, ImageRebase.self, ImageResize.self, ImageMap.self, ImageMeasure.self, ImageCompare.self,
            ImageAmend.self, ImageDd.self, ImageBitmap.self, ImageBench.self,
        ]
    )
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable { case human, json }

extension ImageFormat: ExpressibleByArgument {}
extension Preallocation: ExpressibleByArgument {}

/// Prints `tern: <image>: <problem>; <fix>` and returns exit status 1.
func imageFailure(_ path: String, _ error: DiskError) -> ExitCode {
    let fix: String
    switch error {
    case .inUse(_, let readOnly):
        fix = readOnly ? "use -U to read it anyway" : "stop the program using it first"
    case .refused:
        printError("tern: \(path): \(error)")
        return ExitCode(1)
    case .corrupt: fix = "run `tern image check \(path)` and repair or restore it"
    case .unsupported: fix = "convert it to a plain qcow2 v3 image first"
    case .readOnly: fix = "check the file's permissions and the image's corrupt bit"
    case .io: fix = "check the path, permissions and free space"
    case .outOfRange: fix = "keep offsets within the virtual size"
    case .invalidArgument: fix = "see `tern image --help`"
    }
    printError("tern: \(path): \(error); \(fix)")
    return ExitCode(1)
}

/// Prints a usage error naming the verb's help and exits with status 2.
func usageFailure(_ problem: String, verb: String) -> Never {
    fail("\(problem); see 'tern image \(verb) --help'", status: 2)
}

/// Runs `body`, turning a DiskError into the one-line message and exit status 1.
func withImage<T>(_ path: String, _ body: () throws(DiskError) -> T) throws -> T {
    do {
        return try body()
    } catch {
        throw imageFailure(path, error)
    }
}

struct SizeArgument: ExpressibleByArgument {
    let bytes: UInt64
    init?(argument: String) {
        guard let b = parseImageSize(argument) else { return nil }
        bytes = b
    }
}

/// Writes one line to standard error.
func printError(_ line: String) {
    let s = line + "\n"
    _ = s.withCString { write(2, $0, strlen($0)) }
}

import ArgumentParser
import Qcow2

struct ImageCompare: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Compare two images' contents, as qemu-img compare (exit 0 identical, 1 different, 2 open error, 4 read error).")
    @Option(name: .customShort("f"), help: "Format of the first image (probed if omitted).") var firstFormat: ImageFormat?
    @Option(name: .customShort("F"), help: "Format of the second image (probed if omitted).") var secondFormat: ImageFormat?
    @Flag(name: .customShort("s"), help: "Strict: sizes and allocation must match too.") var strict = false
    @Flag(name: .customShort("p"), help: "Show progress.") var progress = false
    @Flag(name: .customShort("q"), help: "Quiet: print nothing, only the exit status tells.") var quiet = false
    @Flag(name: [.customShort("U"), .long], help: "Read the images even if another process has them open (no lock).") var forceShare = false
    @Argument(help: "First image.") var first: String
    @Argument(help: "Second image.") var second: String

    func run() throws {
        let a = try opened(first, firstFormat), b = try opened(second, secondFormat)
        let meter = ProgressMeter(progress && !quiet ? .always : quiet ? .off : .onTerminal)
        let result: ImageComparison
        do {
            result = try compareImages(a, first, b, second, strict: strict,
                                       sizesDiffer: { if !quiet { print("Warning: Image size mismatch!") } }, progress: meter)
        } catch {
            _ = imageFailure(first, error)
            throw ExitCode(4)
        }
        if !quiet { print(result.message) }
        meter.end()
        if result != .identical { throw ExitCode(1) }
    }

    func opened(_ path: String, _ format: ImageFormat?) throws -> any BlockBackend {
        do { return try openImage(path: path, format: format, forceShare: forceShare) } catch {
            _ = imageFailure(path, error)
            throw ExitCode(2)
        }
    }
}

import ArgumentParser
import Qcow2

struct ImageRebase: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rebase", abstract: "Change an image's backing file, keeping its contents unless -u.")
    @Option(name: .customShort("b"), help: "New backing file; an empty string removes it.") var backing: String
    @Option(name: .customShort("F"), help: "Format of the new backing file.") var backingFormat: ImageFormat?
    @Flag(name: .customShort("u"), help: "Unsafe: change the header only.") var unsafe = false
    @Flag(name: .customShort("p"), help: "Show progress.") var progress = false
    @Flag(name: .customShort("q"), help: "Quiet: no progress.") var quiet = false
    @Argument(help: "qcow2 image.") var file: String

    func run() throws {
        let meter = ProgressMeter(progress && !quiet ? .always : quiet ? .off : .onTerminal)
        try withImage(file) { () throws(DiskError) in
            let nb: String? = backing.isEmpty ? nil : backing
            var fmt = backingFormat
            if let b = nb, fmt == nil {
                fmt = try probeFormat(PosixFile(path: resolveBacking(b, relativeTo: file), writable: false))
            }
            try rebase(path: file, newBacking: nb, format: fmt, unsafe: unsafe, progress: meter)
        }
        meter.finish()
    }
}

import ArgumentParser
import Qcow2

struct ImageCommit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "commit", abstract: "Write an image's changes into its backing file, then empty it.")
    @Flag(name: .customShort("d"), help: "Keep the top image's contents (do not empty it).") var keep = false
    @Option(name: .customShort("b"), help: "The image of the backing chain to commit into (implies -d).") var base: String?
    @Flag(name: .customShort("p"), help: "Show progress.") var progress = false
    @Flag(name: .customShort("q"), help: "Quiet: no progress and no message.") var quiet = false
    @Argument(help: "qcow2 image with a backing file.") var file: String

    func run() throws {
        let meter = ProgressMeter(progress && !quiet ? .always : quiet ? .off : .onTerminal)
        try withImage(file) { () throws(DiskError) in try commit(path: file, base: base, keepTop: keep, progress: meter) }
        meter.finish()
        if !quiet { print("Image committed.") }
    }
}

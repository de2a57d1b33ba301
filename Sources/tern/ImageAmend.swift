import ArgumentParser
import Qcow2

struct ImageAmend: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "amend", abstract: "Change a qcow2 image's options (compat, lazy_refcounts, size), as qemu-img amend.")
    @Option(name: .customShort("o"), help: "Options to change, key=value[,...]; `-o help` lists them.") var options: [String] = []
    @Option(name: .customShort("f"), help: "Image format (probed if omitted; only qcow2 has options to amend).") var format: ImageFormat?
    @Flag(name: .customShort("p"), help: "Show progress.") var progress = false
    @Flag(name: .customShort("q"), help: "Quiet: no progress.") var quiet = false
    @Argument(help: "qcow2 image.") var file: String?

    func run() throws {
        let optionString = options.joined(separator: ",")
        if ImageSpec.wantsHelp(optionString) {
            print(ImageSpec.help(for: .qcow2), terminator: "")
            return
        }
        guard let file else { usageFailure("give the image to amend", verb: "amend") }
        guard !optionString.isEmpty else { usageFailure("give the options to change with -o", verb: "amend") }
        if format == .raw { throw imageFailure(file, .unsupported("raw images have no options to amend")) }
        let meter = ProgressMeter(progress && !quiet ? .always : .off)
        try withImage(file) { () throws(DiskError) in
            var spec = ImageSpec(format: .qcow2)
            try spec.apply(optionString)
            try amend(path: file, spec, progress: meter)
        }
        meter.end()
    }
}

import ArgumentParser
import Qcow2

struct ImageMeasure: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "measure", abstract: "Show the file size a new image needs, as qemu-img measure does.")
    @Option(name: .customShort("O"), help: "Format of the new image: raw (default) or qcow2.") var outputFormat: ImageFormat = .raw
    @Option(name: .customShort("o"), help: "Options of the new image, key=value[,...]; `-o help` lists them.") var options: [String] = []
    @Option(name: .customShort("f"), help: "Format of the source image (probed if omitted).") var sourceFormat: ImageFormat?
    @Option(name: .long, help: "Measure an empty image of this size instead of a source image.") var size: SizeArgument?
    @Option(name: .long, help: "Output format: human or json.") var output: OutputFormat = .human
    @Argument(help: "Source image whose data the new image will hold.") var file: String?

    func validate() throws {
        if file != nil && size != nil { throw ValidationError("--size cannot be used together with a file name") }
        if file == nil && size == nil && !ImageSpec.wantsHelp(options.joined(separator: ",")) {
            throw ValidationError("give --size or one file name")
        }
        if file == nil && sourceFormat != nil { throw ValidationError("-f needs a file name") }
    }

    func run() throws {
        let optionString = options.joined(separator: ",")
        if ImageSpec.wantsHelp(optionString) {
            print(ImageSpec.help(for: outputFormat), terminator: "")
            return
        }
        let name = file ?? "measure"
        let result = try withImage(name) { () throws(DiskError) -> ImageMeasurement in
            var spec = ImageSpec(format: outputFormat)
            try spec.apply(optionString)
            if let size { spec.size = size.bytes }
            let source = try file.map { (f) throws(DiskError) in try openImage(path: f, format: sourceFormat) }
            return try measure(spec, source: source, sourcePath: file)
        }
        if output == .json { print(result.json.render()) } else { print(result.human, terminator: "") }
    }
}

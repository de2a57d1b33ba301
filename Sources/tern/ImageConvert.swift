import ArgumentParser
import Qcow2

struct ImageConvert: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert", abstract: "Copy an image into a new raw or qcow2 image (optionally compressed).")
    @Option(name: .customShort("f"), help: "Source format (probed if omitted).") var sourceFormat: ImageFormat?
    @Option(name: .customShort("O"), help: "Output format: qcow2 or raw.") var outputFormat: ImageFormat = .qcow2
    @Flag(name: .customShort("c"), help: "Compress every cluster (deflate), qcow2 output only.") var compress = false
    @Option(name: .long, help: "Output cluster size.") var clusterSize: SizeArgument?
    @Option(name: .long, help: "Output compatibility level: 1.1 or 0.10.") var compat: String = "1.1"
    @Argument(help: "Source image.") var source: String
    @Argument(help: "Output image (written to a temporary file, then renamed).") var destination: String

    func validate() throws {
        if compress && outputFormat != .qcow2 { throw ValidationError("-c needs -O qcow2") }
    }

    func run() throws {
        let src = try withImage(source) { () throws(DiskError) in try openImage(path: source, format: sourceFormat) }
        // Errors name the source: bad images are the usual cause; write errors carry the output path.
        try withImage(source) { () throws(DiskError) in
            var o = ConvertOptions()
            o.format = outputFormat
            o.compress = compress
            o.create.clusterSize = clusterSize?.bytes ?? 65536
            o.create.version = compat == "0.10" ? 2 : 3
            try convert(src, to: destination, options: o)
        }
    }
}

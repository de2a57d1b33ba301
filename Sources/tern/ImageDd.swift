import ArgumentParser
import Qcow2

struct ImageDd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dd", abstract: "Copy part of an image into a new image, as qemu-img dd (bs=, count=, skip=, if=, of=).")
    @Option(name: .customShort("f"), help: "Format of the input (probed if omitted).") var sourceFormat: ImageFormat?
    @Option(name: .customShort("O"), help: "Format of the output: raw (default) or qcow2.") var outputFormat: ImageFormat = .raw
    @Argument(help: "Operands: if=INPUT of=OUTPUT [bs=BYTES] [count=BLOCKS] [skip=BLOCKS].") var operands: [String] = []

    func run() throws {
        var input: String?, output: String?
        var o = DdOptions()
        for operand in operands {
            guard let eq = operand.firstIndex(of: "=") else { usageFailure("unrecognized operand \(operand)", verb: "dd") }
            let key = operand[..<eq], value = String(operand[operand.index(after: eq)...])
            switch key {
            case "if": input = value
            case "of": output = value
            case "bs":
                guard let bs = parseImageSize(value), (1...UInt64(Int32.max)).contains(bs) else {
                    usageFailure("bs must be between 1 and \(Int32.max) bytes", verb: "dd")
                }
                o.blockSize = bs
            case "count":
                guard let n = parseImageSize(value) else { usageFailure("invalid count '\(value)'", verb: "dd") }
                o.count = n
            case "skip":
                guard let n = parseImageSize(value) else { usageFailure("invalid skip '\(value)'", verb: "dd") }
                o.skip = n
            default: usageFailure("unrecognized operand \(operand)", verb: "dd")
            }
        }
        guard let input, let output else { usageFailure("give both if=INPUT and of=OUTPUT", verb: "dd") }
        let source = try withImage(input) { () throws(DiskError) in try openImage(path: input, format: sourceFormat) }
        let copied = try withImage(output) { () throws(DiskError) in
            try dd(source, to: output, spec: ImageSpec(format: outputFormat), options: o)
        }
        if !copied { printError("tern: \(input): cannot skip to specified offset") }
    }
}

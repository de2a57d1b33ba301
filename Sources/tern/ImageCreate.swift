import ArgumentParser
import Qcow2

struct ImageCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Create a new disk image (raw unless -f qcow2, as qemu-img).")

    @Option(name: [.customShort("f"), .long], help: "Image format: raw (default) or qcow2.") var format: ImageFormat = .raw
    @Option(name: [.customShort("b"), .long], help: "Backing file (relative names are relative to the new image).") var backing: String?
    @Option(name: [.customShort("F"), .customLong("backing-format")], help: "Format of the backing file.") var backingFormat: ImageFormat?
    @Option(name: .customShort("o"), help: "Format options, key=value[,...] as qemu-img takes them; `-o help` lists them.")
    var options: [String] = []
    @Flag(name: .customShort("u"), help: "Do not open the backing file (the size must be given).") var unsafe = false
    @Flag(name: .customShort("q"), help: "Quiet: do not print the \"Formatting\" line.") var quiet = false
    @Option(name: .long, help: "Cluster size in bytes (512 to 2M).") var clusterSize: SizeArgument?
    @Option(name: .long, help: "Preallocation: off, metadata, falloc or full.") var preallocation: String?
    @Option(name: .long, help: "qcow2 compatibility level: 1.1 (v3) or 0.10 (v2).") var compat: String?
    @Option(name: .long, help: "Refcount width in bits (1 to 64).") var refcountBits: UInt32?
    @Flag(name: .long, help: "Use extended L2 entries (subcluster allocation).") var extendedL2 = false
    @Flag(name: .long, help: "Enable lazy refcounts (compatible feature bit).") var lazyRefcounts = false
    @Argument(help: "The image file to create.") var file: String?
    @Argument(help: "Virtual size (e.g. 10G); defaults to the backing file's size.") var size: SizeArgument?

    func run() throws {
        let optionString = options.joined(separator: ",")
        if ImageSpec.wantsHelp(optionString) {
            print(ImageSpec.help(for: format), terminator: "")
            return
        }
        guard let file else { usageFailure("give the image file to create", verb: "create") }
        let spec = try withImage(file) { () throws(DiskError) -> ImageSpec in
            var spec = ImageSpec(format: format)
            if let c = clusterSize { try spec.set("cluster_size", String(c.bytes)) }
            if let p = preallocation { try spec.set("preallocation", p) }
            if let c = compat { try spec.set("compat", c) }
            if let r = refcountBits { try spec.set("refcount_bits", String(r)) }
            if extendedL2 { try spec.set("extended_l2", "on") }
            if lazyRefcounts { try spec.set("lazy_refcounts", "on") }
            if let b = backing { try spec.set("backing_file", b) }
            if let f = backingFormat { try spec.set("backing_fmt", f.rawValue) }
            try spec.apply(optionString)
            if let s = size {
                guard spec.size == nil else { throw DiskError.invalidArgument("the size is given twice; give it once") }
                spec.size = s.bytes
            }
            try createImage(file, spec: &spec, openBacking: !unsafe)
            return spec
        }
        if !quiet { print(spec.formattingLine(file)) }
    }
}

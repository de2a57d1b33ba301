import ArgumentParser
import Qcow2

struct ImageConvert: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert", abstract: "Copy an image into a raw or qcow2 image (raw unless -O qcow2, as qemu-img).")
    @Option(name: .customShort("f"), help: "Source format (probed if omitted).") var sourceFormat: ImageFormat?
    @Option(name: .customShort("O"), help: "Output format: raw (default) or qcow2.") var outputFormat: ImageFormat = .raw
    @Option(name: .customShort("o"), help: "Output format options, key=value[,...]; `-o help` lists them.") var options: [String] = []
    @Option(name: .customShort("B"), help: "Backing file of the output: only what the source's top image holds is copied.")
    var backing: String?
    @Flag(name: .customShort("c"), help: "Compress every cluster (deflate), qcow2 output only.") var compress = false
    @Flag(name: .customShort("p"), help: "Show progress.") var progress = false
    @Flag(name: .customShort("n"), help: "Write into an existing output image instead of creating it.") var existing = false
    @Option(name: .customShort("S"), help: "Zero runs of this many bytes stay sparse; 0 writes every byte (default 4k).")
    var sparseSize: SizeArgument?
    @Option(name: .customShort("t"), help: "Output cache mode: writeback, unsafe, writethrough, none or directsync.")
    var cacheMode: String = "writeback"
    @Flag(name: .customShort("W"), help: "Allow out-of-order writes (Tern writes in order, which is always allowed).")
    var outOfOrder = false
    @Option(name: .customShort("m"), help: "Parallel requests, 1 to 16 (Tern copies with one).") var coroutines: Int = 8
    @Flag(name: .customShort("q"), help: "Quiet: no progress.") var quiet = false
    @Option(name: .long, help: "Output cluster size.") var clusterSize: SizeArgument?
    @Option(name: .long, help: "Output compatibility level: 1.1 or 0.10.") var compat: String?
    @Argument(help: "Source image.") var source: String?
    @Argument(help: "Output image (a new file is written beside it, then renamed over it).") var destination: String?

    func validate() throws {
        if compress && outputFormat != .qcow2 { throw ValidationError("-c needs -O qcow2") }
        if compress && existing { throw ValidationError("-c and -n cannot be combined: compressed clusters go into a new image") }
        if backing != nil && outputFormat != .qcow2 { throw ValidationError("-B needs -O qcow2") }
        if !(1...16).contains(coroutines) { throw ValidationError("-m must be between 1 and 16") }
        if CacheMode(qemuName: cacheMode) == nil { throw ValidationError("-t takes writeback, unsafe, writethrough, none or directsync") }
    }

    func run() throws {
        let optionString = options.joined(separator: ",")
        if ImageSpec.wantsHelp(optionString) {
            print(ImageSpec.help(for: outputFormat), terminator: "")
            return
        }
        guard let source, let destination else { usageFailure("give the source image and the output image", verb: "convert") }
        let src = try withImage(source) { () throws(DiskError) in try openImage(path: source, format: sourceFormat) }
        var o = ConvertOptions()
        try withImage(destination) { () throws(DiskError) in
            var spec = ImageSpec(format: outputFormat)
            if let c = clusterSize { try spec.set("cluster_size", String(c.bytes)) }
            if let c = compat { try spec.set("compat", c) }
            try spec.apply(optionString)
            if let b = backing { try spec.set("backing_file", b) }
            // -B and -o backing_file=... alike: the output's backing file supplies what the source's top image lacks.
            if let b = spec.qcow2.backingFile {
                let backingPath = resolveBacking(b, relativeTo: destination)
                if spec.qcow2.backingFormat == nil {
                    spec.qcow2.backingFormat = try probeFormat(PosixFile(path: backingPath, writable: false))
                }
                _ = try openImage(path: backingPath, format: spec.qcow2.backingFormat)
            }
            o.format = outputFormat
            o.create = spec.qcow2
            o.zstd = spec.zstd
            o.compress = compress
            o.existingTarget = existing
            o.topOnly = spec.qcow2.backingFile != nil
            o.sparseSize = sparseSize?.bytes ?? 4096
            o.cache = CacheMode(qemuName: cacheMode) ?? .writeback
            if !existing { try checkOutput(destination, size: outputFormat == .raw ? src.virtualSize : nil) }
        }
        let meter = ProgressMeter(progress && !quiet ? .always : quiet ? .off : .onTerminal)
        // Errors name the source: bad images are the usual cause; output errors carry the output path.
        try withImage(source) { () throws(DiskError) in try convert(src, to: destination, options: o, progress: meter) }
        meter.finish()
    }
}

extension CacheMode {
    /// qemu-img's cache mode names: those that bypass the host's page cache map to `.none`.
    init?(qemuName: String) {
        switch qemuName {
        case "writeback", "unsafe", "writethrough": self = .writeback
        case "none", "directsync": self = .none
        default: return nil
        }
    }
}

import ArgumentParser
import Qcow2

struct ImageCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Create a new disk image.")

    @Option(name: [.customShort("f"), .long], help: "Image format: qcow2 or raw.") var format: ImageFormat = .qcow2
    @Option(name: [.customShort("b"), .long], help: "Backing file (relative names are relative to the new image).") var backing: String?
    @Option(name: [.customShort("F"), .customLong("backing-format")], help: "Format of the backing file.") var backingFormat: ImageFormat?
    @Option(name: .long, help: "Cluster size in bytes (512 to 2M).") var clusterSize: SizeArgument?
    @Option(name: .long, help: "Preallocation: off, metadata or full.") var preallocation: Preallocation = .off
    @Option(name: .long, help: "qcow2 compatibility level: 1.1 (v3) or 0.10 (v2).") var compat: String = "1.1"
    @Option(name: .long, help: "Refcount width in bits (1 to 64).") var refcountBits: UInt32 = 16
    @Flag(name: .long, help: "Use extended L2 entries (subcluster allocation).") var extendedL2 = false
    @Flag(name: .long, help: "Enable lazy refcounts (compatible feature bit).") var lazyRefcounts = false
    @Argument(help: "The image file to create.") var file: String
    @Argument(help: "Virtual size (e.g. 10G); defaults to the backing file's size.") var size: SizeArgument?

    func run() throws {
        try withImage(file) { () throws(DiskError) in
            var bytes = size?.bytes
            if bytes == nil, let b = backing {
                bytes = try openImage(path: resolveBacking(b, relativeTo: file), format: backingFormat).virtualSize
            }
            guard let sz = bytes else { throw DiskError.invalidArgument("a size is required") }
            switch format {
            case .raw:
                guard backing == nil else { throw DiskError.invalidArgument("raw images cannot have a backing file") }
                try atomicWrite(file) { (f) throws(DiskError) in
                    try f.truncate(sz)
                    if preallocation == .full && sz > 0 { try f.allocate(at: 0, length: sz) }
                }
            case .qcow2:
                var o = Qcow2CreateOptions(size: sz)
                o.clusterSize = clusterSize?.bytes ?? 65536
                switch compat {
                case "1.1", "v3", "3": o.version = 3
                case "0.10", "v2", "2": o.version = 2
                default: throw DiskError.invalidArgument("compat must be 1.1 or 0.10")
                }
                o.refcountBits = refcountBits
                o.backingFile = backing
                if let b = backing {
                    if let bf = backingFormat { o.backingFormat = bf }
                    else { o.backingFormat = try probeFormat(PosixFile(path: resolveBacking(b, relativeTo: file), writable: false)) }
                }
                o.preallocation = preallocation
                o.extendedL2 = extendedL2
                o.lazyRefcounts = lazyRefcounts
                try Qcow2Image.create(path: file, options: o)
            }
        }
        print("Formatting '\(file)', fmt=\(format.rawValue)")
    }
}

import ArgumentParser
import Qcow2

struct ImageBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Measure request throughput, like `qemu-img bench`.")
    @Option(name: .customShort("c"), help: "Number of requests.") var count = 75000
    @Option(name: .customShort("d"), help: "Requests in flight (one thread each, at most --threads threads).") var depth = 64
    @Option(name: .customShort("s"), help: "Request size.") var bufferSize: SizeArgument?
    @Option(name: .customShort("S"), help: "Step between sequential requests (default: request size).") var step: SizeArgument?
    @Option(name: .customShort("o"), help: "Starting offset.") var offset: SizeArgument?
    @Flag(name: .customShort("w"), help: "Write instead of read.") var write = false
    @Flag(name: .long, help: "Random request offsets (aligned to the request size).") var random = false
    @Option(name: .long, help: "Byte pattern written.") var pattern: UInt8 = 0xa5
    @Option(name: .long, help: "Flush after every N writes (0: only at the end).") var flushInterval = 0
    @Option(name: .long, help: "Most threads to use (default: one per online CPU).") var threads: Int?
    @Option(name: .customShort("f"), help: "Image format (probed if omitted).") var format: ImageFormat?
    @Option(name: .long, help: "Output format: human or json.") var output: OutputFormat = .human
    @Argument(help: "Image file.") var file: String

    func run() throws {
        var o = BenchOptions()
        o.count = count
        o.depth = depth
        o.bufferSize = Int(bufferSize?.bytes ?? 4096)
        o.stepSize = step?.bytes
        o.offset = offset?.bytes ?? 0
        o.write = write
        o.random = random
        o.pattern = pattern
        o.flushInterval = flushInterval
        o.threads = threads
        if output == .human {
            print("Sending \(count) \(write ? "write" : "read") requests, \(o.bufferSize) bytes each, \(depth) in parallel (starting at offset \(o.offset), \(random ? "random offsets" : "step size \(o.stepSize ?? UInt64(o.bufferSize))"))")
        }
        let secs = try withImage(file) { () throws(DiskError) in
            let dev = try openImage(path: file, format: format, writable: write)
            return try runBench(dev, o)
        }
        let ops = Double(count) / secs
        if output == .json {
            print(JSON.object([("requests", .int(Int64(count))), ("seconds", .double(secs)), ("ops-per-second", .double(ops))]).render())
        } else {
            print("Run completed in \(String(Double(Int(secs * 1000)) / 1000)) seconds.")
        }
    }
}

import ArgumentParser
import Qcow2

struct ImageMap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "map", abstract: "Show where each range of the guest disk is stored.")
    @Option(name: .long, help: "Output format: human or json.") var output: OutputFormat = .human
    @Flag(name: [.customShort("U"), .long], help: "Read the image even if another process has it open (no lock).") var forceShare = false
    @Argument(help: "Image file.") var file: String

    func run() throws {
        let m = try withImage(file) { () throws(DiskError) in try imageMap(path: file, forceShare: forceShare) }
        if output == .json {
            print(mapJSON(m))
            return
        }
        print("Offset          Length          Mapped to       File")
        for e in m where e.data {
            guard let o = e.offset, let f = e.file else { continue }
            print("\(("0x" + String(e.start, radix: 16)).padding(16))\(("0x" + String(e.length, radix: 16)).padding(16))\(("0x" + String(o, radix: 16)).padding(16))\(f)")
        }
    }
}

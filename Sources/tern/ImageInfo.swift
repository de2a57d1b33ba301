import ArgumentParser
import Qcow2

struct ImageInfo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info", abstract: "Show the format, size, backing file and snapshots of an image, as qemu-img does.")
    @Option(name: .long, help: "Output format: human or json.") var output: OutputFormat = .human
    @Flag(name: .long, help: "Show every image of the backing chain, top first.") var backingChain = false
    @Flag(name: [.customShort("U"), .long], help: "Read the image even if another process has it open (no lock).") var forceShare = false
    @Argument(help: "Image file.") var file: String

    func run() throws {
        let chain = try withImage(file) { () throws(DiskError) in try imageInfoChain(path: file, backingChain: backingChain, forceShare: forceShare) }
        switch output {
        case .json:
            print(backingChain ? JSON.array(chain.map(\.json)).render() : chain[0].json.render())
        case .human:
            print(chain.map { humanInfo($0.json, snapshots: $0.snapshots) }.joined(separator: "\n"), terminator: "")
        }
    }
}

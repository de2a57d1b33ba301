import ArgumentParser
import Qcow2

struct ImageMap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "map", abstract: "Show where each range of the guest disk is stored, as qemu-img map does.")
    @Option(name: .long, help: "Output format: human or json.") var output: OutputFormat = .human
    @Flag(name: [.customShort("U"), .long], help: "Read the image even if another process has it open (no lock).") var forceShare = false
    @Argument(help: "Image file.") var file: String

    func run() throws {
        let m = try withImage(file) { () throws(DiskError) in try imageMap(path: file, forceShare: forceShare) }
        if output == .json { print(mapJSON(m)) } else { print(mapHuman(m), terminator: "") }
    }
}

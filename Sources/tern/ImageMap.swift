import ArgumentParser
import Qcow2

struct ImageMap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "map", abstract: "Show where each range of the guest disk is stored, as qemu-img map does.")
    @Option(name: .long, help: "Output format: human or json.") var output: OutputFormat = .human
    @Argument(help: "Image file.") var file: String

    func run() throws {
        let m = try withImage(file) { () throws(DiskError) in try imageMap(path: file) }
        if output == .json { print(mapJSON(m)) } else { print(mapHuman(m), terminator: "") }
    }
}

import ArgumentParser
import Qcow2

struct ImageCommit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "commit", abstract: "Write an image's changes into its backing file, then empty it.")
    @Flag(name: .customShort("d"), help: "Keep the top image's contents (do not empty it).") var keep = false
    @Argument(help: "qcow2 image with a backing file.") var file: String

    func run() throws {
        try withImage(file) { () throws(DiskError) in try commit(path: file, keepTop: keep) }
        print("Image committed.")
    }
}

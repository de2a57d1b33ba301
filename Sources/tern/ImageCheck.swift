import ArgumentParser
import Qcow2

struct ImageCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check a qcow2 image's metadata (exit 0 clean, 1 check failed, 2 corruption, 3 leaks).")
    @Option(name: .long, help: "Output format: human or json.") var output: OutputFormat = .human
    @Flag(name: .long, help: "Repair refcounts (leaks and errors) and COPIED flags.") var repair = false
    @Flag(name: [.customShort("U"), .long], help: "Read the image even if another process has it open (no lock).") var forceShare = false
    @Argument(help: "Image file.") var file: String

    func run() throws {
        let r = try withImage(file) { () throws(DiskError) in
            let f = try PosixFile(path: file, writable: repair, forceShare: forceShare)
            guard try probeFormat(f) == .qcow2 else { throw DiskError.unsupported("check works on qcow2 images only") }
            var o = Qcow2OpenOptions(writable: repair)
            o.openBacking = false
            let img = try Qcow2Image(file: f, path: file, options: o)
            return try img.check(repair: repair)
        }
        if output == .json {
            print(checkJSON(r, path: file).render())
        } else {
            for m in r.messages { print(m) }
            if r.leaksFixed > 0 || r.corruptionsFixed > 0 {
                print("The following inconsistencies were found and repaired:\n\n    \(r.leaksFixed) leaked clusters\n    \(r.corruptionsFixed) corruptions\n")
            }
            if r.corruptions > 0 {
                print("\n\(r.corruptions) errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.")
            }
            if r.leaks > 0 {
                print("\n\(r.leaks) leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.")
            }
            if r.isClean { print("No errors were found on the image.") }
            let pct = { (x: UInt64) -> String in
                r.totalClusters == 0 ? "0.00" : String(Double(Int(Double(x) * 10000 / Double(r.totalClusters))) / 100)
            }
            print("\(r.allocatedClusters)/\(r.totalClusters) = \(pct(r.allocatedClusters))% allocated, \(pct(r.fragmentedClusters))% fragmented, \(pct(r.compressedClusters))% compressed clusters")
            print("Image end offset: \(r.imageEndOffset)")
        }
        if r.exitCode != 0 { throw ExitCode(r.exitCode) }
    }
}

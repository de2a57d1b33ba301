import ArgumentParser
import Qcow2

struct ImageInfo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info", abstract: "Show the format, size, backing file and snapshots of an image.")
    @Option(name: .long, help: "Output format: human or json.") var output: OutputFormat = .human
    @Flag(name: [.customShort("U"), .long], help: "Read the image even if another process has it open (no lock).") var forceShare = false
    @Argument(help: "Image file.") var file: String

    func run() throws {
        let info = try withImage(file) { () throws(DiskError) in try imageInfo(path: file, forceShare: forceShare) }
        if output == .json {
            print(info.render())
            return
        }
        guard case .object(let kv) = info else { return }
        func val(_ k: String) -> JSON? { kv.first { $0.0 == k }?.1 }
        func num(_ k: String) -> UInt64 { if case .int(let i)? = val(k) { return UInt64(bitPattern: i) }; return 0 }
        func str(_ k: String) -> String? { if case .string(let s)? = val(k) { return s }; return nil }
        print("image: \(file)")
        print("file format: \(str("format") ?? "?")")
        print("virtual size: \(humanSize(num("virtual-size"))) (\(num("virtual-size")) bytes)")
        print("disk size: \(humanSize(num("actual-size")))")
        if val("cluster-size") != nil { print("cluster_size: \(num("cluster-size"))") }
        if let b = str("backing-filename") {
            print("backing file: \(b) (actual path: \(str("full-backing-filename") ?? b))")
            if let f = str("backing-filename-format") { print("backing file format: \(f)") }
        }
        if case .array(let snaps)? = val("snapshots") {
            print("Snapshot list:")
            print("ID        TAG               VM SIZE                DATE     VM CLOCK")
            for case .object(let s) in snaps {
                func f(_ k: String) -> String {
                    switch s.first(where: { $0.0 == k })?.1 { case .string(let x)?: return x; case .int(let i)?: return String(i); default: return "" }
                }
                print("\(f("id").padding(10))\(f("name").padding(18))\(f("vm-state-size").padding(23))\(f("date-sec"))")
            }
        }
        if case .object(let fs)? = val("format-specific"), case .object(let data)? = fs.first(where: { $0.0 == "data" })?.1 {
            print("Format specific information:")
            for (k, v) in data {
                if case .string(let t) = v { print("    \(k): \(t)") } else { print("    \(k): \(v.render())") }
            }
        }
    }
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self + " " : self + String(repeating: " ", count: n - count) }
}

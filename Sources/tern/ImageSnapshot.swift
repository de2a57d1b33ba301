import ArgumentParser
import Qcow2

struct ImageSnapshot: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot", abstract: "Create, list, apply or delete internal snapshots.")
    @Option(name: .customShort("c"), help: "Create a snapshot with this name.") var create: String?
    @Flag(name: .customShort("l"), help: "List snapshots.") var list = false
    @Option(name: .customShort("a"), help: "Apply (revert to) a snapshot, by id or name.") var apply: String?
    @Option(name: .customShort("d"), help: "Delete a snapshot, by id or name.") var delete: String?
    @Option(name: .long, help: "Output format for -l: human or json.") var output: OutputFormat = .human
    @Argument(help: "qcow2 image.") var file: String

    func validate() throws {
        let n = [create != nil, list, apply != nil, delete != nil].filter { $0 }.count
        if n != 1 { throw ValidationError("give exactly one of -c, -l, -a, -d") }
    }

    func run() throws {
        try withImage(file) { () throws(DiskError) in
            let img = try Qcow2Image(path: file, options: Qcow2OpenOptions(writable: !list))
            if let n = create { try img.createSnapshot(name: n) }
            if let n = apply { try img.applySnapshot(n) }
            if let n = delete { try img.deleteSnapshot(n) }
            if list {
                let s = img.snapshots
                if output == .json {
                    print(JSON.array(s.map { x in
                        .object([("id", .string(x.id)), ("name", .string(x.name)), ("vm-state-size", .uint(x.vmStateSize)),
                                 ("date-sec", .uint(UInt64(x.dateSec))), ("date-nsec", .uint(UInt64(x.dateNsec))),
                                 ("vm-clock-nsec", .uint(x.vmClockNsec))])
                    }).render())
                } else {
                    print(snapshotTable(s), terminator: "")
                }
            }
        }
    }
}

import FoundationEssentials
import ToolstackAPI

/// Prints VMs: an aligned table for people, JSON for scripts.
enum VMPrinter {
    static func print(_ vm: VMInfo, format: OutputFormat) {
        print([vm], format: format, single: true)
    }

    static func print(_ vms: [VMInfo], format: OutputFormat, single: Bool = false) {
        switch format {
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
            let data = single ? try? encoder.encode(vms[0]) : try? encoder.encode(vms)
            Swift.print(data.map { String(decoding: $0, as: UTF8.self) } ?? "[]")
        case .human:
            Swift.print(table(vms), terminator: "")
        }
    }

    /// NAME, STATE, EXIT, PID, CPU and AUTOSTART columns, padded to their widest cell.
    static func table(_ vms: [VMInfo]) -> String {
        let rows = [["NAME", "STATE", "EXIT", "PID", "CPU", "AUTOSTART"]] + vms.map { vm in
            [vm.name, vm.state.rawValue, vm.exitStatus.map(String.init) ?? "-", vm.pid.map(String.init) ?? "-",
             vm.cpuPolicy.rawValue, vm.autostart ? "yes" : "no"]
        }
        let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count)
            }.joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }
}

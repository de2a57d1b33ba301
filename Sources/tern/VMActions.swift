import ArgumentParser
import ToolstackAPI

/// `tern vm start NAME`: starts the VM and waits until it runs (or has already ended).
struct VMStart: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "start", abstract: "Start a VM.")
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var ternd: TerndOptions
    @Option(help: ArgumentHelp("human (default) or json.", valueName: "format")) var output: OutputFormat = .human

    func run() {
        runVMCommand { () throws(TerndClientError) in
            VMPrinter.print(try ternd.call("POST", vmPath(name, "start"), as: VMInfo.self), format: output)
        }
    }
}

/// `tern vm stop NAME`: asks the guest's VMM to stop, then kills it after the grace period.
struct VMStop: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop a VM: the control socket's stop, then SIGKILL after --grace seconds.")
    @Argument(help: "The VM's name.") var name: String
    @Option(help: ArgumentHelp("Seconds to wait before killing it (default 10).", valueName: "seconds")) var grace: Int?
    @OptionGroup var ternd: TerndOptions
    @Option(help: ArgumentHelp("human (default) or json.", valueName: "format")) var output: OutputFormat = .human

    func run() {
        runVMCommand { () throws(TerndClientError) in
            let path = vmPath(name, "stop") + (grace.map { "?grace=\($0)" } ?? "")
            VMPrinter.print(try ternd.call("POST", path, timeout: (grace ?? 10) + 30, as: VMInfo.self), format: output)
        }
    }
}

/// `tern vm kill NAME`: SIGKILL, no grace.
struct VMKill: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kill", abstract: "Kill a VM's process at once (SIGKILL).")
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var ternd: TerndOptions
    @Option(help: ArgumentHelp("human (default) or json.", valueName: "format")) var output: OutputFormat = .human

    func run() {
        runVMCommand { () throws(TerndClientError) in
            VMPrinter.print(try ternd.call("POST", vmPath(name, "kill"), as: VMInfo.self), format: output)
        }
    }
}

/// `tern vm pause NAME`: the VM's control socket `pause`; ternd answers 409 with the VM's reason if it refuses.
struct VMPause: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pause", abstract: "Pause a running VM.")
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var ternd: TerndOptions
    @Option(help: ArgumentHelp("human (default) or json.", valueName: "format")) var output: OutputFormat = .human

    func run() {
        runVMCommand { () throws(TerndClientError) in
            VMPrinter.print(try ternd.call("POST", vmPath(name, "pause"), as: VMInfo.self), format: output)
        }
    }
}

/// `tern vm resume NAME`: the VM's control socket `resume`.
struct VMResume: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Resume a paused VM.")
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var ternd: TerndOptions
    @Option(help: ArgumentHelp("human (default) or json.", valueName: "format")) var output: OutputFormat = .human

    func run() {
        runVMCommand { () throws(TerndClientError) in
            VMPrinter.print(try ternd.call("POST", vmPath(name, "resume"), as: VMInfo.self), format: output)
        }
    }
}

/// `tern vm delete NAME`: forgets a VM that is not running, with its files.
struct VMDelete: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a VM that is not running.")
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var ternd: TerndOptions

    func run() {
        runVMCommand { () throws(TerndClientError) in
            try TerndOptions.check(try ternd.client().send("DELETE", vmPath(name)))
        }
    }
}

/// `tern vm show NAME`: one VM, as a table row or JSON.
struct VMShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one VM.")
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var ternd: TerndOptions
    @Option(help: ArgumentHelp("human (default) or json.", valueName: "format")) var output: OutputFormat = .human

    func run() {
        runVMCommand { () throws(TerndClientError) in
            VMPrinter.print(try ternd.call("GET", vmPath(name), as: VMInfo.self), format: output)
        }
    }
}

/// `tern vm list`: every VM, as a table or a JSON array.
struct VMListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the VMs.")
    @OptionGroup var ternd: TerndOptions
    @Option(help: ArgumentHelp("human (default) or json.", valueName: "format")) var output: OutputFormat = .human

    func run() {
        runVMCommand { () throws(TerndClientError) in
            VMPrinter.print(try ternd.call("GET", "/v1/vms", as: VMList.self).vms, format: output)
        }
    }
}

import ArgumentParser
import ToolstackAPI

/// What every `tern vm` command about one VM takes: the VM's name, how to reach ternd and how to print the answer.
struct VMTarget: ParsableArguments {
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var ternd: TerndOptions
    @Option(help: ArgumentHelp("human (default) or json.", valueName: "format")) var output: OutputFormat = .human

    /// Sends `method` to the VM's resource (or to its `action`) and prints the VM ternd answers.
    func request(_ method: String, _ action: String? = nil, query: String = "", timeout: Int = 60) {
        runVMCommand { () throws(TerndClientError) in
            VMPrinter.print(try ternd.call(method, vmPath(name, action) + query, timeout: timeout, as: VMInfo.self), format: output)
        }
    }
}

/// `tern vm start NAME`: starts the VM and waits until it runs (or has already ended).
struct VMStart: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "start", abstract: "Start a VM.")
    @OptionGroup var vm: VMTarget

    func run() { vm.request("POST", "start") }
}

/// `tern vm stop NAME`: asks the guest's VMM to stop, then kills it after the grace period.
struct VMStop: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop a VM: the control socket's stop, then SIGKILL after --grace seconds.")
    @OptionGroup var vm: VMTarget
    @Option(help: ArgumentHelp("Seconds to wait before killing it (default 10).", valueName: "seconds")) var grace: Int?

    func run() { vm.request("POST", "stop", query: grace.map { "?grace=\($0)" } ?? "", timeout: (grace ?? 10) + 30) }
}

/// `tern vm kill NAME`: SIGKILL, no grace.
struct VMKill: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kill", abstract: "Kill a VM's process at once (SIGKILL).")
    @OptionGroup var vm: VMTarget

    func run() { vm.request("POST", "kill") }
}

/// `tern vm pause NAME`: the VM's control socket `pause`; ternd answers 409 with the VM's reason if it refuses.
struct VMPause: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pause", abstract: "Pause a running VM.")
    @OptionGroup var vm: VMTarget

    func run() { vm.request("POST", "pause") }
}

/// `tern vm resume NAME`: the VM's control socket `resume`.
struct VMResume: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Resume a paused VM.")
    @OptionGroup var vm: VMTarget

    func run() { vm.request("POST", "resume") }
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
    @OptionGroup var vm: VMTarget

    func run() { vm.request("GET") }
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

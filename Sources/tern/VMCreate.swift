import ArgumentParser
import FoundationEssentials
import Glibc
import ToolstackAPI
import VMM

/// `tern vm create NAME`: defines a VM in ternd from `tern run`'s flags or a `--config` file.
struct VMCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Define a VM in ternd from tern run's flags or --config FILE (it starts with `tern vm start`).",
        discussion: "Relative paths are made absolute here. ternd sets --name, --api-socket and --console for every VM.")

    @Argument(help: "The VM's name: letters, digits, '-', '_' and '.'.")
    var name: String

    @OptionGroup var settings: Run

    @Option(name: .customLong("cpu-policy"), help: ArgumentHelp("shared (default) or exclusive.", valueName: "policy"))
    var cpuPolicy: CPUPolicy?

    @Flag(help: "Start the VM whenever ternd starts.")
    var autostart = false

    @OptionGroup var ternd: TerndOptions

    @Option(help: ArgumentHelp("human (default) or json.", valueName: "format"))
    var output: OutputFormat = .human

    func run() {
        runVMCommand { () throws(TerndClientError) in
            let request = CreateVMRequest(name: name, config: try config(), cpuPolicy: cpuPolicy, autostart: autostart ? true : nil)
            guard let body = try? JSONEncoder().encode(request) else { throw .failed("cannot encode the request") }
            let vm = try ternd.call("POST", "/v1/vms", body: Array(body), as: VMInfo.self)
            VMPrinter.print(vm, format: output)
        }
    }

    /// The settings as the JSON object ternd takes: flags merged over the file, paths absolute, ternd's own keys out.
    private func config() throws(TerndClientError) -> JSONValue {
        if settings.apiSocket != nil || settings.console != nil {
            throw .usage("ternd sets --api-socket and --console for every VM; leave them out (the console goes to the VM's console_log)")
        }
        if let other = settings.name, other != name {
            throw .usage("--name \(other) differs from the VM's name \(name); leave --name out")
        }
        var config: VMConfig
        do {
            config = try settings.resolveConfig()
        } catch {
            throw .usage(error.description)
        }
        config.name = name
        config.resolvePaths(relativeTo: Self.workingDirectory())
        guard let encoded = try? JSONEncoder().encode(config),
              var members = (try? JSONDecoder().decode(JSONValue.self, from: encoded))?.objectValue else {
            throw .failed("cannot encode the VM's settings")
        }
        members["console"] = nil
        members["api_socket"] = nil
        return .object(members)
    }

    /// The working directory with a trailing "/", as `VMConfig.resolvePaths` takes it; empty (paths left as they
    /// are, for ternd to refuse by name) when it cannot be read.
    private static func workingDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
        guard getcwd(&buffer, buffer.count) != nil else { return "" }
        let path = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return path.hasSuffix("/") ? path : path + "/"
    }
}

extension CPUPolicy: ExpressibleByArgument {}

import ArgumentParser
import Glibc
import Logging
import VMM

@main
struct Tern: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "tern",
        abstract: "A hypervisor for Linux/KVM: run virtual machines and manage their disk images.",
        version: version,
        subcommands: [Run.self, Exec.self, Control.self, VMCommand.self, ImageCommand.self, InitramfsCommand.self, Version.self])

    /// Parses and runs a command. Usage errors print one line and exit 2; `--help` and `--version` print and exit 0.
    static func main() {
        let command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            if exitCode(for: error) == .validationFailure {
                fail("\(message(for: error)); see 'tern --help'", status: 2)
            }
            exit(withError: error)
        }
        do {
            var command = command
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print Tern's version, how it was built, and the host's KVM.")

    @Option(name: .customLong("kvm-device"), help: ArgumentHelp("The KVM device to describe.", valueName: "path"))
    var kvmDevice = "/dev/kvm"

    func run() {
        print("tern \(Tern.version)")
        print("built with Swift \(Self.compilerVersion), \(Self.configurationName) configuration")
        print("KVM: \(HostKVM.describe(device: kvmDevice))")
    }

    /// The compiler that built this binary, to the minor version.
    static var compilerVersion: String {
        #if compiler(>=6.4)
        "6.4 or later"
        #elseif compiler(>=6.3)
        "6.3"
        #elseif compiler(>=6.2)
        "6.2"
        #elseif compiler(>=6.1)
        "6.1"
        #else
        "6.0"
        #endif
    }

    static var configurationName: String {
        #if DEBUG
        "debug"
        #else
        "release"
        #endif
    }
}

/// Options every command that logs shares.
struct LoggingOptions: ParsableArguments {
    @Flag(name: .shortAndLong, help: "Log more: once for info, twice for debug with a trace of guest exits and device queue notifications.")
    var verbose: Int

    func bootstrap() {
        let level: Logger.Level = verbose >= 2 ? .trace : verbose == 1 ? .info : .warning
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

/// Prints `tern: message` on stderr and exits with `status`.
func fail(_ message: String, status: Int32 = 1) -> Never {
    var line = "tern: \(message)\n"
    line.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
    exit(status)
}

import ArgumentParser
import Foundation
import Logging
import Toolstack
import ToolstackAPI

/// ternd: the host toolstack daemon. Runs in the foreground under a service manager; see README.md, "ternd".
@main
struct Ternd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ternd",
        abstract: "Run Tern's host toolstack: a REST API that creates, starts, supervises and remembers VMs.",
        discussion: """
            Each VM runs as its own `tern run` process, which keeps running when ternd stops; a restarted ternd \
            takes its VMs back. Serves the API on a Unix socket (mode 0660), and on TCP with --listen and \
            --token-file (clients send Authorization: Bearer TOKEN).
            """)

    /// Parses and runs; usage errors print one line and exit 2, as `tern`'s do.
    static func main() async {
        do {
            try await parse().run()
        } catch {
            if exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data("ternd: \(message(for: error)); see 'ternd --help'\n".utf8))
                Foundation.exit(2)
            }
            exit(withError: error)
        }
    }

    @Option(name: .customLong("state-dir"), help: ArgumentHelp("Where ternd keeps its database and each VM's files.", valueName: "dir"))
    var stateDirectory: String

    @Option(help: ArgumentHelp("The API's Unix socket.", valueName: "path"))
    var socket: String

    @Option(help: ArgumentHelp("Also serve the API on TCP at HOST:PORT; needs --token-file.", valueName: "host:port"))
    var listen: String?

    @Option(name: .customLong("token-file"), help: ArgumentHelp("A file holding the bearer token TCP clients must send.", valueName: "file"))
    var tokenFile: String?

    @Option(help: ArgumentHelp("The tern executable that runs each VM (default: the one beside ternd).", valueName: "path"))
    var tern: String?

    @Flag(name: .shortAndLong, help: "Log more: once for every request, twice for debug.")
    var verbose: Int

    func validate() throws {
        if listen != nil, tokenFile == nil {
            throw ValidationError("--listen needs --token-file: TCP clients must authenticate")
        }
        if let listen, Self.address(listen) == nil {
            throw ValidationError("--listen '\(listen)' is not HOST:PORT; give an address such as 127.0.0.1:8470")
        }
    }

    func run() async throws {
        let level: Logger.Level = verbose >= 2 ? .debug : verbose == 1 ? .info : .notice
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "ternd")
        let settings = DaemonSettings(
            stateDirectory: absolute(stateDirectory), socketPath: absolute(socket), listen: listen.flatMap(Self.address),
            token: try tokenFile.map(Self.readToken), tern: tern.map(absolute) ?? Self.ternBesideThisExecutable())
        guard FileManager.default.isExecutableFile(atPath: settings.tern) else {
            throw ValidationError("\(settings.tern) is not an executable; give ternd --tern PATH")
        }
        do {
            try await Daemon(settings: settings, logger: logger).run()
        } catch {
            logger.critical("\(error.description)")
            throw ExitCode.failure
        }
    }

    /// HOST:PORT, the host without brackets.
    static func address(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
            return nil
        }
        let host = text[..<colon].trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return host.isEmpty ? nil : (host, port)
    }

    /// The token: the file's first line, at least 16 bytes.
    static func readToken(_ path: String) throws -> [UInt8] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ValidationError("--token-file \(path): cannot be read; give a readable file holding the token")
        }
        let token = TerndClient.bearerToken(fromFile: text)
        guard token.utf8.count >= 16 else {
            throw ValidationError("--token-file \(path): the token is shorter than 16 bytes; write a longer one (openssl rand -hex 32)")
        }
        return Array(token.utf8)
    }

    static func ternBesideThisExecutable() -> String {
        URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("tern").path
    }

    private func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }
}

import ArgumentParser
import FoundationEssentials
import Glibc
import ToolstackAPI
import VMM

/// `tern vm`: manages VMs through ternd's REST API.
struct VMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Manage VMs through ternd: create, start, stop, list them.",
        discussion: """
            Talks to ternd at --host (unix:PATH or http://HOST:PORT), else $TERN_HOST, else \
            unix:\(TerndAddress.standardSocket). Over TCP a bearer token comes from --token-file or $TERN_TOKEN.
            """,
        subcommands: [VMCreate.self, VMStart.self, VMStop.self, VMKill.self, VMPause.self, VMResume.self, VMDelete.self,
                      VMShow.self, VMListCommand.self])
}

/// How every `tern vm` command reaches ternd.
struct TerndOptions: ParsableArguments {
    @Option(help: ArgumentHelp("ternd's address: unix:PATH or http://HOST:PORT (default: $TERN_HOST, else unix:\(TerndAddress.standardSocket)).", valueName: "address"))
    var host: String?

    @Option(name: .customLong("token-file"), help: ArgumentHelp("A file holding ternd's bearer token, for TCP (default: $TERN_TOKEN).", valueName: "file"))
    var tokenFile: String?

    func client() throws(TerndClientError) -> TerndClient {
        let text = host ?? getenv("TERN_HOST").map { String(cString: $0) } ?? "unix:\(TerndAddress.standardSocket)"
        let address = try TerndAddress(parsing: text)
        var token = getenv("TERN_TOKEN").map { String(cString: $0) }
        if let tokenFile {
            guard let contents = try? String(contentsOfFile: tokenFile, encoding: .utf8) else {
                throw .usage("--token-file \(tokenFile): cannot be read; give a readable file holding the token")
            }
            token = TerndClient.bearerToken(fromFile: contents)
        }
        return TerndClient(address: address, token: token)
    }

    /// Sends a request and decodes a successful answer as `T`; an error answer becomes its one-line message.
    func call<T: Decodable>(_ method: String, _ path: String, body: [UInt8]? = nil, timeout: Int = 60, as type: T.Type) throws(TerndClientError) -> T {
        let answer = try client().send(method, path, body: body, timeout: timeout)
        try Self.check(answer)
        guard let value = try? JSONDecoder().decode(T.self, from: Data(answer.body)) else {
            throw .failed("ternd's answer to \(method) \(path) is not what this tern expects; are tern and ternd the same version?")
        }
        return value
    }

    static func check(_ answer: TerndClient.Answer) throws(TerndClientError) {
        guard (200..<300).contains(answer.status) else {
            if let error = try? JSONDecoder().decode(APIError.self, from: Data(answer.body)) {
                throw .failed(error.error)
            }
            throw .failed("ternd answered HTTP \(answer.status)")
        }
    }
}

/// Runs a `tern vm` command body: errors print one line, usage errors exit 2, others 1.
func runVMCommand(_ body: () throws(TerndClientError) -> Void) {
    do {
        try body()
    } catch {
        switch error {
        case .usage(let message): fail(message, status: 2)
        case .failed(let message): fail(message)
        }
    }
}

/// The path of a VM's resource, with the name percent-encoded.
func vmPath(_ name: String, _ action: String? = nil) -> String {
    let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.".utf8)
    let encoded = name.utf8.map { allowed.contains($0) ? String(UnicodeScalar($0)) : "%" + String($0, radix: 16, uppercase: true).leftPadded(to: 2) }.joined()
    return "/v1/vms/\(encoded)" + (action.map { "/\($0)" } ?? "")
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

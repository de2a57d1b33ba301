import ArgumentParser
import FoundationEssentials
import VMM

/// `tern control`: talks to a running VM through the socket it was started with (`tern run --api-socket PATH`).
struct Control: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Control a running VM through its --api-socket.",
        discussion: """
            Commands: status; stop; pause (every vCPU and I/O thread stopped, the guest's clock held); resume; balloon SIZE (ask the guest to give back memory until it has SIZE less, \
            0 to return it all); balloon-statistics. The answer is printed as one JSON object.
            """)

    @Option(name: .customLong("api-socket"), help: ArgumentHelp("The socket the VM serves (tern run --api-socket).", valueName: "path"))
    var apiSocket: String

    @Argument(help: "status | stop | pause | resume | balloon SIZE | balloon-statistics")
    var command: String

    @Argument(help: "The balloon size for `balloon`, with a K, M or G suffix.")
    var size: String?

    func run() {
        var request = ControlRequest(command: command)
        switch command {
        case "balloon":
            guard let size else { fail("balloon needs a size, such as `tern control --api-socket PATH balloon 256M`", status: 2) }
            do {
                request.target = size == "0" ? "0" : try MemorySize(parsing: size).description
            } catch {
                fail(error.description, status: 2)
            }
        case "status", "stop", "pause", "resume", "balloon-statistics":
            if size != nil { fail("\(command) takes no size", status: 2) }
        default:
            fail("unknown control command '\(command)'; use status, stop, pause, resume, balloon SIZE or balloon-statistics", status: 2)
        }
        switch ControlClient.send(request, to: apiSocket) {
        case .failure(let error):
            fail(error.description)
        case .success(let response):
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            if let text = try? encoder.encode(response) { print(String(decoding: text, as: UTF8.self)) }
            if !response.ok { fail(response.error ?? "the VM refused the command") }
        }
    }
}

import Foundation
import Glibc
import Testing
import ToolstackAPI

@Suite("ternd: bad requests, authentication, the OpenAPI document", .serialized, .timeLimit(.minutes(5)))
struct RequestTests {
    @Test("bad requests get a 4xx naming the field, and leave no VM behind")
    func badRequests() throws {
        let ternd = try TerndUnderTest()
        let kernel = try Repository.guest("hello")
        let cases: [(body: String, status: Int, field: String?)] = [
            ("not json", 400, "body"),
            ("[1, 2]", 400, "body"),
            (#"{"config": {"kernel": "\#(kernel)"}}"#, 400, "name"),
            (#"{"name": "a b", "config": {"kernel": "\#(kernel)"}}"#, 400, "name"),
            (#"{"name": "vm", "config": "kernel"}"#, 400, "config"),
            (#"{"name": "vm"}"#, 400, "config"),
            (#"{"name": "vm", "config": {"kernel": "\#(kernel)"}, "colour": "red"}"#, 400, "colour"),
            (#"{"name": "vm", "config": {"kernel": "\#(kernel)"}, "cpu_policy": "greedy"}"#, 400, "cpu_policy"),
            (#"{"name": "vm", "config": {"kernel": "\#(kernel)"}, "autostart": "yes"}"#, 400, "autostart"),
            (#"{"name": "vm", "config": {"kernel": "\#(kernel)", "memory": 2.5}}"#, 400, "config.memory"),
            (#"{"name": "vm", "config": {"kernel": "\#(kernel)", "cpus": 0}}"#, 400, "config.cpus"),
            (#"{"name": "vm", "config": {"kernel": "\#(kernel)", "flux": 1}}"#, 400, "config.flux"),
            (#"{"name": "vm", "config": {"kernel": "\#(kernel)", "console": "stdio"}}"#, 400, "config.console"),
            (#"{"name": "vm", "config": {"kernel": "\#(kernel)", "name": "other"}}"#, 400, "config.name"),
            (#"{"name": "vm", "config": {"kernel": "guest.elf"}}"#, 400, "config.kernel"),
            (#"{"name": "vm", "config": {"kernel": "/nonexistent/guest.elf"}}"#, 400, "config.kernel"),
            (#"{"name": "vm", "config": {}}"#, 400, "config.kernel"),
        ]
        for (body, status, field) in cases {
            let answer = try ternd.request("POST", "/v1/vms", json: body)
            #expect(answer.status == status, "\(body): \(String(decoding: answer.body, as: UTF8.self))")
            let error = try ternd.decode(APIError.self, answer)
            #expect(error.field == field, "\(body): \(error)")
            #expect(!error.error.isEmpty && !error.error.contains("\n"))
        }
        #expect(try ternd.list().isEmpty)

        try ternd.create("vm", guest: "hello")
        let duplicate = try ternd.request("POST", "/v1/vms", json: #"{"name": "vm", "config": {"kernel": "\#(kernel)"}}"#)
        #expect(duplicate.status == 409)
        #expect(try ternd.request("GET", "/v1/vms/ghost").status == 404)
        #expect(try ternd.action("ghost", "start").status == 404)
        #expect(try ternd.action("vm", "stop").status == 409)
        #expect(try ternd.action("vm", "kill").status == 409)
        #expect(try ternd.action("vm", "resume").status == 409)
        let grace = try ternd.request("POST", "/v1/vms/vm/stop?grace=forever")
        #expect(grace.status == 400)
        #expect(try ternd.decode(APIError.self, grace).field == "grace")
        let unknownRoute = try ternd.request("GET", "/v1/nothing")
        #expect(unknownRoute.status == 404 && (try? ternd.decode(APIError.self, unknownRoute)) != nil)
        let tooLarge = try ternd.request("POST", "/v1/vms", json: String(repeating: " ", count: 2 << 20))
        #expect(tooLarge.status == 413)
        #expect(try ternd.list().map(\.name) == ["vm"])
        #expect(try ternd.request("GET", "/v1/host").status == 200, "ternd survived every bad request")
    }

    @Test("a token file's first line is the token, without its blanks or line end, for ternd and tern alike")
    func tokenFile() {
        #expect(TerndClient.bearerToken(fromFile: "0123456789abcdef\n") == "0123456789abcdef")
        #expect(TerndClient.bearerToken(fromFile: " 0123456789abcdef \r\nsecond line\n") == "0123456789abcdef")
        #expect(TerndClient.bearerToken(fromFile: "\t0123456789abcdef") == "0123456789abcdef")
        #expect(TerndClient.bearerToken(fromFile: "").isEmpty)
    }

    @Test("TCP needs the bearer token; the Unix socket does not")
    func tokenOnTCP() throws {
        let port = try freePort()
        let directory = TemporaryDirectory()
        let token = "0123456789abcdef0123456789abcdef"
        try (token + "\n").write(toFile: "\(directory.path)/token", atomically: true, encoding: .utf8)
        let ternd = try TerndUnderTest(extraArguments: ["--listen", "127.0.0.1:\(port)", "--token-file", "\(directory.path)/token"])
        let up = eventually(within: 10) { (try? TerndClient(address: .tcp(host: "127.0.0.1", port: port), token: token).send("GET", "/v1/host"))?.status == 200 }
        #expect(up)
        for wrong in [nil, "", "0123456789abcdef0123456789abcdee", token + "0", String(token.dropLast())] {
            let answer = try TerndClient(address: .tcp(host: "127.0.0.1", port: port), token: wrong).send("GET", "/v1/vms")
            #expect(answer.status == 401, "token \(wrong ?? "none")")
            #expect((try? ternd.decode(APIError.self, answer))?.field == "Authorization")
        }
        #expect(try ternd.request("GET", "/v1/vms").status == 200)
        var status = stat()
        #expect(lstat(ternd.socket, &status) == 0 && status.st_mode & 0o777 == 0o660, "the Unix socket is mode 0660")
        let logged = try String(contentsOfFile: ternd.log, encoding: .utf8)
        #expect(logged.contains("status=401"), "every request is logged with its outcome")
    }

    @Test("the served OpenAPI document is the repository's, and names every route")
    func openAPIDocument() throws {
        let ternd = try TerndUnderTest()
        let answer = try ternd.request("GET", "/v1/openapi.yaml")
        #expect(answer.status == 200)
        let served = String(decoding: answer.body, as: UTF8.self)
        let kept = try String(contentsOfFile: "\(Repository.root)/Sources/Toolstack/openapi.yaml", encoding: .utf8)
        #expect(served == kept)
        for path in ["/v1/vms:", "/v1/vms/{name}:", "/v1/vms/{name}/start:", "/v1/vms/{name}/stop:", "/v1/vms/{name}/kill:",
                     "/v1/vms/{name}/pause:", "/v1/vms/{name}/resume:", "/v1/host:", "/v1/events:", "/v1/openapi.yaml:"] {
            #expect(served.contains("  \(path)\n"), "\(path)")
        }
    }

    @Test("schemathesis finds no server error and no schema violation", .timeLimit(.minutes(5)),
          .enabled(if: schemathesis != nil, "schemathesis is not installed (pip install schemathesis; .ci/run installs it)"))
    func schemathesisRun() throws {
        let port = try freePort()
        let directory = TemporaryDirectory()
        let token = "0123456789abcdef0123456789abcdef"
        try (token + "\n").write(toFile: "\(directory.path)/token", atomically: true, encoding: .utf8)
        let ternd = try TerndUnderTest(extraArguments: ["--listen", "127.0.0.1:\(port)", "--token-file", "\(directory.path)/token"])
        try ternd.create("existing", guest: "hello")
        let result = try run([schemathesis!, "run", "http://127.0.0.1:\(port)/v1/openapi.yaml",
                              "--header", "Authorization: Bearer \(token)",
                              "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
                              "--exclude-path", "/v1/events", "--max-examples", "30"],
                             environment: ["SCHEMATHESIS_TELEMETRY": "false"], directory: directory.path)
        #expect(result.status == 0, "\(result.output)")
    }
}

/// The schemathesis command, when installed.
let schemathesis: String? = {
    for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
        let path = "\(directory)/schemathesis"
        if access(path, X_OK) == 0 { return path }
    }
    return nil
}()

/// A TCP port on 127.0.0.1 that nothing listens on now.
func freePort() throws -> Int {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    try #require(bound == 0)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(descriptor, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

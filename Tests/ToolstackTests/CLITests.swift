import Foundation
import Glibc
import Testing
import ToolstackAPI

@Suite("tern vm: the command line over ternd", .serialized, .timeLimit(.minutes(2)))
struct CLITests {
    @Test("create from flags with a relative kernel, start, show, list as JSON and as a table, delete")
    func commands() throws {
        let ternd = try TerndUnderTest()
        let tern = try Repository.binary("tern")
        let host = ["--host", "unix:\(ternd.socket)"]
        let created = try run([tern, "vm", "create", "cli", "--kernel", "hello.elf", "--memory", "64M", "--cmdline", "hi"] + host,
                              directory: "\(Repository.root)/Guests/build")
        #expect(created.status == 0, "\(created.output)")
        #expect(try ternd.vm("cli").config.objectValue?["kernel"] == .string(try Repository.guest("hello")))

        let started = try run([tern, "vm", "start", "cli", "--output", "json"] + host)
        #expect(started.status == 0, "\(started.output)")
        _ = try ternd.wait(for: "cli", state: .stopped)

        let listed = try run([tern, "vm", "list", "--output", "json"], environment: ["TERN_HOST": "unix:\(ternd.socket)"])
        #expect(listed.status == 0)
        let vms = try JSONDecoder().decode([VMInfo].self, from: Data(listed.output.utf8))
        #expect(vms.map(\.name) == ["cli"] && vms[0].state == .stopped && vms[0].exitStatus == 0)
        let json = try JSONSerialization.jsonObject(with: Data(listed.output.utf8)) as? [[String: Any]]
        #expect(json?.first?.keys.contains("exit_status") == true)

        let table = try run([tern, "vm", "list"] + host)
        let lines = table.output.split(separator: "\n")
        #expect(lines.first?.hasPrefix("NAME") == true && lines.count == 2 && lines[1].contains("stopped"), "\(table.output)")
        #expect(try run([tern, "vm", "show", "cli"] + host).output.contains("cli"))

        #expect(try run([tern, "vm", "delete", "cli"] + host).status == 0)
        let missing = try run([tern, "vm", "show", "cli"] + host)
        #expect(missing.status == 1 && missing.output.contains("no VM is named 'cli'"), "\(missing.output)")
    }

    @Test("usage errors exit 2 with one line; an unreachable ternd exits 1 naming the address")
    func errors() throws {
        let tern = try Repository.binary("tern")
        let badHost = try run([tern, "vm", "list", "--host", "ftp://x"])
        #expect(badHost.status == 2 && badHost.output.split(separator: "\n").count == 1, "\(badHost.output)")
        let nobody = try run([tern, "vm", "list", "--host", "unix:/nonexistent/ternd.sock"])
        #expect(nobody.status == 1 && nobody.output.contains("/nonexistent/ternd.sock"), "\(nobody.output)")
        let owned = try run([tern, "vm", "create", "x", "--kernel", "/k", "--console", "none", "--host", "unix:/nonexistent/ternd.sock"])
        #expect(owned.status == 2 && owned.output.contains("--console"), "\(owned.output)")
    }
}

import Foundation
import Testing
import Toolstack
import ToolstackAPI

@Suite("ternd's store: transactions and migrations")
struct StoreTests {
    @Test("create, transition and delete are each one transaction with its event; refused changes leave nothing")
    func transactions() throws {
        let directory = TemporaryDirectory()
        let path = "\(directory.path)/ternd.sqlite"
        let store = try Store(path: path)
        let record = VMRecord(name: "a", config: #"{"kernel":"/k"}"#, cpuPolicy: .exclusive, autostart: true)
        let created = try store.create(record)
        #expect(created.kind == "created" && created.state == .defined)
        #expect(throws: ToolstackError.self) { try store.create(record) }
        #expect(throws: ToolstackError.self) {
            try store.transition("a", Transition(to: .paused, message: "x"), expecting: [.running])
        }
        let process = ProcessIdentity(pid: 42, startTime: 12345)
        _ = try store.transition("a", Transition(to: .running, process: process, message: "running"), expecting: [.defined])
        #expect(throws: ToolstackError.self) { try store.delete(name: "a") }
        #expect(try store.events(after: 0).map(\.message) == ["defined", "running"])

        // What was acknowledged is there when the database is opened again (the migrations run once).
        let reopened = try Store(path: path)
        let read = try #require(try reopened.vm(named: "a"))
        #expect(read.state == .running && read.process == process && read.cpuPolicy == .exclusive && read.autostart)
        _ = try reopened.transition("a", Transition(to: .stopped, exitStatus: 3, message: "ended"))
        _ = try reopened.delete(name: "a")
        #expect(try reopened.vms().isEmpty)
        #expect(try reopened.events(after: 2).map(\.kind) == ["state", "deleted"])
    }
}

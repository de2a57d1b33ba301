import Foundation
import Glibc
import Testing
import ToolstackAPI

@Suite("ternd: restart and re-adoption", .serialized, .timeLimit(.minutes(3)))
struct RecoveryTests {
    @Test("ternd killed with -9 and restarted takes back its running VM and marks the one that died meanwhile")
    func restartReadopts() async throws {
        let ternd = try TerndUnderTest()
        for name in ["survivor", "casualty"] {
            try ternd.create(name, guest: longRunning.guest, cmdline: longRunning.cmdline, extra: longRunning.extra)
        }
        try ternd.create("defined-only", guest: "hello")
        let survivor = try #require(try ternd.decode(VMInfo.self, try ternd.action("survivor", "start")).pid)
        let casualty = try #require(try ternd.decode(VMInfo.self, try ternd.action("casualty", "start")).pid)
        ternd.kill9()
        #expect(!hasExited(survivor), "the VM must outlive ternd")
        kill(pid_t(casualty), SIGKILL)
        #expect(eventually(within: 10) { hasExited(casualty) })
        try ternd.start()

        let adopted = try ternd.vm("survivor")
        #expect(adopted.state == .running)
        #expect(adopted.pid == survivor)
        let dead = try ternd.vm("casualty")
        #expect(dead.state == .crashed, "its control socket was left behind: it did not stop in order")
        #expect(dead.pid == nil)
        #expect(try ternd.vm("defined-only").state == .defined)

        let stopped = try ternd.decode(VMInfo.self, try ternd.request("POST", "/v1/vms/survivor/stop?grace=10"))
        #expect(stopped.state == .stopped)
        #expect(hasExited(survivor))
    }

    @Test("a restarted ternd starts the autostart VMs that are not running")
    func autostart() async throws {
        let ternd = try TerndUnderTest()
        let config = #"{"kernel": "\#(try Repository.guest(longRunning.guest))", "cmdline": "\#(longRunning.cmdline)", "virtio_console": true}"#
        let created = try ternd.request("POST", "/v1/vms", json: #"{"name": "auto", "config": \#(config), "autostart": true}"#)
        #expect(created.status == 201)
        #expect(try ternd.vm("auto").state == .defined)
        ternd.kill9()
        try ternd.start()
        let vm = try ternd.wait(for: "auto", state: .running)
        #expect(vm.autostart)
        _ = try ternd.action("auto", "kill")
    }
}

import Foundation
import Testing
import VMM

@Suite struct VsockSettingTests {
    @Test func parsesCIDAndPath() throws {
        let setting = try VsockSetting.parse("cid=3,uds=/tmp/tern.vsock")
        #expect(setting == VsockSetting(guestCID: 3, socketPath: "/tmp/tern.vsock"))
        #expect(setting.description == "cid=3,uds=/tmp/tern.vsock")
        #expect(try VsockSetting.parse("uds=/run/v,cid=4294967294").guestCID == UInt32.max - 1)
    }

    @Test(arguments: [
        ("cid=3", "no uds=PATH"),
        ("uds=/tmp/v", "no cid=N"),
        ("cid=2,uds=/tmp/v", "cid 2 is reserved"),
        ("cid=0,uds=/tmp/v", "cid 0 is reserved"),
        ("cid=4294967295,uds=/tmp/v", "cid 4294967295 is reserved"),
        ("cid=4294967296,uds=/tmp/v", "is not a number from 3"),
        ("cid=-3,uds=/tmp/v", "is not a number from 3"),
        ("cid=3,cid=4,uds=/tmp/v", "cid is given twice"),
        ("cid=3,uds=", "is not key=value"),
        ("cid=3,uds=/tmp/v,port=5", "unknown option 'port'"),
        ("cid=3,uds=/" + String(repeating: "a", count: 96), "uds path is 97 bytes"),
        ("", "is not key=value"),
    ])
    func refusesWithOneLine(_ spec: String, _ expected: String) {
        do {
            _ = try VsockSetting.parse(spec)
            Issue.record("'\(spec)' was accepted")
        } catch {
            #expect(error.description.contains(expected), "\(error)")
            #expect(error.description.hasPrefix("vsock '\(spec)': ") && !error.description.contains("\n"))
        }
    }

    @Test func longestPathFits() throws {
        let path = "/" + String(repeating: "a", count: 95)
        #expect(try VsockSetting.parse("cid=3,uds=\(path)").socketPath == path)
    }

    @Test func jsonIsTheSameString() throws {
        let setting = try JSONDecoder().decode(VsockSetting.self, from: Data(#""cid=7,uds=/tmp/x.sock""#.utf8))
        #expect(setting == VsockSetting(guestCID: 7, socketPath: "/tmp/x.sock"))
        #expect(String(decoding: try JSONEncoder().encode(setting), as: UTF8.self) == #""cid=7,uds=\/tmp\/x.sock""#)
        #expect(throws: ConfigError.self) { try JSONDecoder().decode(VsockSetting.self, from: Data(#""cid=1,uds=/x""#.utf8)) }
    }
}

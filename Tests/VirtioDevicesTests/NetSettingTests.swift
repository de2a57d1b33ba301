import Foundation
import NetBackends
import Testing
import VMM
import VirtioDevices

@Suite struct NetSettingTests {
    @Test func parsesTap() throws {
        let setting = try NetSetting.parse("tap=tap0")
        #expect(setting.backend == .tap("tap0"))
        #expect(setting.mac == nil)
        let withMAC = try NetSetting.parse("tap=tern-vm1,mac=52:54:00:12:34:56")
        #expect(withMAC.backend == .tap("tern-vm1"))
        #expect(withMAC.mac == MACAddress(rawValue: 0x5254_0012_3456))
        #expect(withMAC.description == "tap=tern-vm1,mac=52:54:00:12:34:56")
    }

    @Test func parsesUser() throws {
        #expect(try NetSetting.parse("user") == NetSetting(backend: .user(forwards: [])))
        let setting = try NetSetting.parse("user,hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-10.0.2.15:53,mac=52:54:00:00:00:01")
        #expect(setting.backend == .user(forwards: [
            HostForward(transport: .tcp, hostPort: 2222, guestPort: 22),
            HostForward(
                transport: .udp, hostAddress: IPv4Address(0x7F00_0001), hostPort: 5353,
                guestAddress: IPv4Address(0x0A00_020F), guestPort: 53),
        ]))
        #expect(setting.mac?.description == "52:54:00:00:00:01")
        #expect(setting.description == "user,hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-10.0.2.15:53,mac=52:54:00:00:00:01")
        #expect(try NetSetting.parse(setting.description) == setting)
    }

    @Test(arguments: [
        ("", "net '': '' is not a network backend; write tap=NAME[,mac=MAC] or user[,hostfwd=tcp::2222-:22][,mac=MAC]"),
        ("bridge=br0", "net 'bridge=br0': 'bridge=br0' is not a network backend; write tap=NAME[,mac=MAC] or user[,hostfwd=tcp::2222-:22][,mac=MAC]"),
        ("tap", "net 'tap': tap needs the interface name; write tap=NAME"),
        ("tap=", "net 'tap=': tap name '' must be 1 to 15 characters without '/', ':' or whitespace"),
        ("tap=a-very-long-name0", "net 'tap=a-very-long-name0': tap name 'a-very-long-name0' must be 1 to 15 characters without '/', ':' or whitespace"),
        ("tap=tap0,hostfwd=tcp::22-:22", "net 'tap=tap0,hostfwd=tcp::22-:22': hostfwd applies to user networking only; a tap has no NAT"),
        ("user,mac", "net 'user,mac': 'mac' is not key=value; write tap=NAME[,mac=MAC] or user[,hostfwd=tcp::2222-:22][,mac=MAC]"),
        ("user,speed=10", "net 'user,speed=10': unknown option 'speed'; use mac, or hostfwd with user"),
        ("user,mac=01:00:00:00:00:00", "net 'user,mac=01:00:00:00:00:00': mac: '01:00:00:00:00:00' is a multicast address; the first byte must be even, like 52:54:00:12:34:56"),
        ("user,mac=52:54:00:00:00:01,mac=52:54:00:00:00:02", "net 'user,mac=52:54:00:00:00:01,mac=52:54:00:00:00:02': mac is given twice"),
        ("user,hostfwd=tcp::2222-:22,hostfwd=tcp:127.0.0.1:2222-:23", "net 'user,hostfwd=tcp::2222-:22,hostfwd=tcp:127.0.0.1:2222-:23': hostfwd tcp:127.0.0.1:2222-:23 and tcp::2222-:22 listen on the same host port; pick another one"),
        ("user,hostfwd=sctp::1-:1", "net 'user,hostfwd=sctp::1-:1': hostfwd 'sctp::1-:1': protocol 'sctp' is not tcp or udp; write [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport, like tcp::2222-:22"),
    ])
    func refuses(_ spec: String, _ message: String) {
        #expect(throws: ConfigError(message)) { try NetSetting.parse(spec) }
    }

    @Test func codesAsTheOptionString() throws {
        let settings = [try NetSetting.parse("user,hostfwd=udp::5000-:7"), try NetSetting.parse("tap=tap1,mac=52:54:00:aa:bb:cc")]
        let json = try JSONEncoder().encode(settings)
        #expect(String(decoding: json, as: UTF8.self) == #"["user,hostfwd=udp::5000-:7","tap=tap1,mac=52:54:00:aa:bb:cc"]"#)
        #expect(try JSONDecoder().decode([NetSetting].self, from: json) == settings)
        #expect(throws: ConfigError("net 'tap': tap needs the interface name; write tap=NAME")) {
            try JSONDecoder().decode([NetSetting].self, from: Data(#"["tap"]"#.utf8))
        }
    }

    @Test func defaultMACIsLocalAndStable() throws {
        let tap = try NetSetting.parse("tap=tap0")
        let first = tap.macAddress(index: 0)
        #expect(first == tap.macAddress(index: 3))
        #expect(first.rawValue >> 24 == 0x52_5400)
        #expect(first != (try NetSetting.parse("tap=tap1")).macAddress(index: 0))
        let user = try NetSetting.parse("user")
        #expect(user.macAddress(index: 0) != user.macAddress(index: 1))
        #expect(user.macAddress(index: 1) == (try NetSetting.parse("user,hostfwd=tcp::80-:80")).macAddress(index: 1))
        let given = try NetSetting.parse("user,mac=52:54:00:00:00:09")
        #expect(given.macAddress(index: 5).description == "52:54:00:00:00:09")
    }
}

@Suite struct HostForwardTests {
    @Test func parsesQEMUSyntax() throws {
        #expect(try HostForward(parsing: "tcp::2222-:22") == HostForward(transport: .tcp, hostPort: 2222, guestPort: 22))
        #expect(try HostForward(parsing: "::8080-:80") == HostForward(transport: .tcp, hostPort: 8080, guestPort: 80))
        let full = try HostForward(parsing: "udp:0.0.0.0:65535-10.0.2.99:1")
        #expect(full.transport == .udp && full.hostAddress == IPv4Address(0) && full.hostPort == 65535)
        #expect(full.guestAddress?.description == "10.0.2.99" && full.guestPort == 1)
        #expect(full.description == "udp:0.0.0.0:65535-10.0.2.99:1")
    }

    @Test(arguments: [
        ("tcp:2222-:22", "the host side 'tcp:2222' is not protocol:address:port"),
        ("tcp::2222:22", "expected one '-' between the host and the guest side"),
        ("tcp::2222-22", "the guest side '22' is not address:port"),
        ("tcp::2222-1-:22", "expected one '-' between the host and the guest side"),
        ("icmp::1-:1", "protocol 'icmp' is not tcp or udp"),
        ("tcp:localhost:2222-:22", "host address 'localhost' is not an IPv4 address"),
        ("tcp:1.2.3.256:2222-:22", "host address '1.2.3.256' is not an IPv4 address"),
        ("tcp::2222-10.0.2:22", "guest address '10.0.2' is not an IPv4 address"),
        ("tcp::0-:22", "host port '0' is not a number from 1 to 65535"),
        ("tcp::65536-:22", "host port '65536' is not a number from 1 to 65535"),
        ("tcp::+22-:22", "host port '+22' is not a number from 1 to 65535"),
        ("tcp::2222-:", "guest port '' is not a number from 1 to 65535"),
    ])
    func refuses(_ text: String, _ problem: String) {
        let message = "hostfwd '\(text)': \(problem); write [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport, like tcp::2222-:22"
        #expect(throws: HostForwardError(message)) { try HostForward(parsing: text) }
    }
}

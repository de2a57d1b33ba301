import Foundation
import Testing
import VMM
import VirtioDevices

@Suite struct BalloonSettingTests {
    @Test func emptyTakesTheDefaults() throws {
        let setting = try BalloonSetting.parse("")
        #expect(setting == BalloonSetting())
        #expect(setting.description == "")
        #expect(setting.options == Balloon.Options())
    }

    @Test func parsesEveryOption() throws {
        let spec = "target=64M,deflate-on-oom=on,stats-interval=5,free-page-reporting=on"
        let setting = try BalloonSetting.parse(spec)
        #expect(setting.target == MemorySize(bytes: 64 << 20))
        #expect(setting.deflateOnOOM && setting.freePageReporting)
        #expect(setting.statisticsInterval == 5)
        #expect(setting.description == spec)
        #expect(setting.options == Balloon.Options(deflateOnOOM: true, statistics: true, freePageReporting: true))
        #expect(try BalloonSetting.parse("deflate-on-oom=off").options == Balloon.Options())
        #expect(try BalloonSetting.parse("stats-interval=86400").statisticsInterval == 86_400)
    }

    @Test(arguments: [
        ("target=lots", "target: memory size 'lots'"),
        ("deflate-on-oom=yes", "deflate-on-oom takes on or off"),
        ("free-page-reporting", "is not key=value"),
        ("stats-interval=0", "from 1 to 86400"),
        ("stats-interval=86401", "from 1 to 86400"),
        ("stats-interval=2.5", "from 1 to 86400"),
        ("target=1M,target=2M", "target is given twice"),
        ("target=1M,", "is not key=value"),
        ("inflate=on", "unknown option 'inflate'"),
    ])
    func refusesWithOneLine(_ spec: String, _ expected: String) {
        do {
            _ = try BalloonSetting.parse(spec)
            Issue.record("'\(spec)' was accepted")
        } catch {
            #expect(error.description.contains(expected), "\(error)")
            #expect(error.description.hasPrefix("balloon '\(spec)': ") && !error.description.contains("\n"))
        }
    }

    @Test func targetMustFitInRAM() throws {
        try BalloonSetting.parse("target=256M").validate(memory: MemorySize(bytes: 256 << 20))
        #expect(throws: ConfigError("balloon target 512M is more than the guest's 256M of RAM; give a smaller target=SIZE")) {
            try BalloonSetting.parse("target=512M").validate(memory: MemorySize(bytes: 256 << 20))
        }
    }

    @Test func jsonIsTheSameString() throws {
        let setting = try JSONDecoder().decode(BalloonSetting.self, from: Data(#""target=1G,stats-interval=10""#.utf8))
        #expect(setting == BalloonSetting(target: MemorySize(bytes: 1 << 30), statisticsInterval: 10))
        #expect(String(decoding: try JSONEncoder().encode(setting), as: UTF8.self) == #""target=1G,stats-interval=10""#)
    }
}

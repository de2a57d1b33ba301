import Devices
import Synchronization
import Testing

/// A clock the test moves by hand.
final class ManualClock: Sendable {
    let seconds: Mutex<Int64>
    init(_ seconds: Int64) { self.seconds = Mutex(seconds) }
    func advance(by delta: Int64) { seconds.withLock { $0 += delta } }
    var read: @Sendable () -> Int64 { { self.seconds.withLock { $0 } } }
}

extension CMOSRTC {
    func register(_ index: UInt8) -> UInt8 {
        withUnsafeBytes(of: index) { write(offset: 0, from: $0) }
        var value: UInt8 = 0
        withUnsafeMutableBytes(of: &value) { read(offset: 1, into: $0) }
        return value
    }

    func setRegister(_ index: UInt8, to value: UInt8) {
        withUnsafeBytes(of: index) { write(offset: 0, from: $0) }
        withUnsafeBytes(of: value) { write(offset: 1, from: $0) }
    }
}

@Suite struct CMOSRTCTests {
    /// 2023-11-14 22:13:20 UTC, a Tuesday.
    static let instant: Int64 = 1_700_000_000

    @Test func readsHostTimeInBCD24Hour() {
        let rtc = CMOSRTC(clock: ManualClock(Self.instant).read)
        #expect(rtc.register(0x0B) == 0x02)
        #expect(rtc.register(0x00) == 0x20)
        #expect(rtc.register(0x02) == 0x13)
        #expect(rtc.register(0x04) == 0x22)
        #expect(rtc.register(0x06) == 3)
        #expect(rtc.register(0x07) == 0x14)
        #expect(rtc.register(0x08) == 0x11)
        #expect(rtc.register(0x09) == 0x23)
        #expect(rtc.register(0x32) == 0x20)
    }

    @Test func binaryAndTwelveHourModesApplyToReads() {
        let rtc = CMOSRTC(clock: ManualClock(Self.instant).read)
        rtc.setRegister(0x0B, to: 0x06)  // binary, 24-hour
        #expect(rtc.register(0x04) == 22 && rtc.register(0x02) == 13 && rtc.register(0x09) == 23 && rtc.register(0x32) == 20)
        rtc.setRegister(0x0B, to: 0x00)  // BCD, 12-hour
        #expect(rtc.register(0x04) == 0x80 | 0x10)
        rtc.setRegister(0x0B, to: 0x04)  // binary, 12-hour
        #expect(rtc.register(0x04) == 0x80 | 10)

        let midnight = CMOSRTC(clock: ManualClock(Self.instant - 22 * 3600 - 13 * 60 - 20).read)
        midnight.setRegister(0x0B, to: 0x00)
        #expect(midnight.register(0x04) == 0x12, "00:xx is 12 AM")
        midnight.setRegister(0x0B, to: 0x02)
        #expect(midnight.register(0x04) == 0x00)
    }

    @Test func statusRegisters() {
        let clock = ManualClock(Self.instant)
        let rtc = CMOSRTC(clock: clock.read)
        #expect(rtc.register(0x0A) == 0x26)
        #expect(rtc.register(0x0D) == 0x80)
        #expect(rtc.register(0x0C) == 0x00)
        clock.advance(by: 1)
        #expect(rtc.register(0x0C) == 0x10, "update-ended flag after a second")
        #expect(rtc.register(0x0C) == 0x00, "reading register C clears it")
        rtc.setRegister(0x0A, to: 0xA6)
        #expect(rtc.register(0x0A) == 0x26, "UIP is read-only")
        rtc.setRegister(0x0D, to: 0x00)
        #expect(rtc.register(0x0D) == 0x80)
    }

    @Test func nmiBitIsIgnoredOnIndexWrites() {
        let rtc = CMOSRTC(clock: ManualClock(Self.instant).read)
        #expect(rtc.register(0x80 | 0x0A) == 0x26)
        rtc.setRegister(0x80 | 0x40, to: 0x5A)
        #expect(rtc.register(0x40) == 0x5A)
    }

    @Test func nvramReadsBackWhatWasWritten() {
        let rtc = CMOSRTC(clock: ManualClock(Self.instant).read)
        for index: UInt8 in [0x0E, 0x0F, 0x10, 0x40, 0x7F] {
            rtc.setRegister(index, to: index ^ 0xA5)
        }
        for index: UInt8 in [0x0E, 0x0F, 0x10, 0x40, 0x7F] {
            #expect(rtc.register(index) == index ^ 0xA5)
        }
        var value: UInt8 = 0
        withUnsafeMutableBytes(of: &value) { rtc.read(offset: 0, into: $0) }
        #expect(value == 0xFF, "the index port is write-only")
    }

    @Test func wordWritesSetIndexThenData() {
        let rtc = CMOSRTC(clock: ManualClock(Self.instant).read)
        withUnsafeBytes(of: UInt16(0x77_41).littleEndian) { rtc.write(offset: 0, from: $0) }
        #expect(rtc.register(0x41) == 0x77)
    }

    @Test func memorySizeFields() {
        let rtc = CMOSRTC(memoryBelow4GiB: 3 << 30, memoryAbove4GiB: 2 << 30, clock: ManualClock(Self.instant).read)
        #expect(rtc.register(0x34) == 0x00 && rtc.register(0x35) == 0xBF)
        #expect(rtc.register(0x5B) == 0x00 && rtc.register(0x5C) == 0x80 && rtc.register(0x5D) == 0x00)
        let small = CMOSRTC(memoryBelow4GiB: 8 << 20, clock: ManualClock(Self.instant).read)
        #expect(small.register(0x34) == 0 && small.register(0x35) == 0)
    }

    @Test func timeWritesBecomeAnOffsetFromHostTime() {
        let clock = ManualClock(Self.instant)
        let rtc = CMOSRTC(clock: clock.read)
        rtc.setRegister(0x02, to: 0x45)  // minutes
        #expect(rtc.register(0x02) == 0x45 && rtc.register(0x00) == 0x20)
        clock.advance(by: 41)
        #expect(rtc.register(0x00) == 0x01 && rtc.register(0x02) == 0x46, "the clock keeps running")
        #expect(rtc.register(0x04) == 0x22)
    }

    @Test func setBitStagesAWholeDate() {
        let clock = ManualClock(Self.instant)
        let rtc = CMOSRTC(clock: clock.read)
        rtc.setRegister(0x0B, to: 0x82)  // SET, 24-hour BCD
        // Day before month: 31 November would not exist, but it is only staged.
        rtc.setRegister(0x07, to: 0x31)
        rtc.setRegister(0x08, to: 0x12)
        rtc.setRegister(0x09, to: 0x99)
        rtc.setRegister(0x32, to: 0x19)
        rtc.setRegister(0x04, to: 0x23)
        rtc.setRegister(0x02, to: 0x59)
        rtc.setRegister(0x00, to: 0x58)
        clock.advance(by: 100)
        #expect(rtc.register(0x00) == 0x58, "time holds while SET is on")
        rtc.setRegister(0x0B, to: 0x02)
        clock.advance(by: 3)
        // 1999-12-31 23:59:58 + 3 s = 2000-01-01 00:00:01, a Saturday.
        #expect(rtc.register(0x00) == 0x01 && rtc.register(0x02) == 0x00 && rtc.register(0x04) == 0x00)
        #expect(rtc.register(0x07) == 0x01 && rtc.register(0x08) == 0x01 && rtc.register(0x09) == 0x00)
        #expect(rtc.register(0x32) == 0x20 && rtc.register(0x06) == 7)
    }

    @Test func twelveHourBinaryWrites() {
        let rtc = CMOSRTC(clock: ManualClock(Self.instant).read)
        rtc.setRegister(0x0B, to: 0x04)  // binary, 12-hour
        rtc.setRegister(0x04, to: 0x80 | 12)  // 12 PM
        rtc.setRegister(0x0B, to: 0x06)
        #expect(rtc.register(0x04) == 12)
        rtc.setRegister(0x0B, to: 0x04)
        rtc.setRegister(0x04, to: 12)  // 12 AM
        rtc.setRegister(0x0B, to: 0x06)
        #expect(rtc.register(0x04) == 0)
    }

    @Test func hostClockIsPlausible() {
        #expect(CMOSRTC.hostClock() > Self.instant)
    }
}

@Suite struct CMOSRTCHostileWriteTests {
    @Test func outOfRangeWritesNeverTrap() {
        let rtc = CMOSRTC(clock: { 1_700_000_000 })
        func write(_ register: UInt8, _ value: UInt8) {
            withUnsafeBytes(of: register) { rtc.write(offset: 0, from: $0) }
            withUnsafeBytes(of: value) { rtc.write(offset: 1, from: $0) }
        }
        func read(_ register: UInt8) -> UInt8 {
            withUnsafeBytes(of: register) { rtc.write(offset: 0, from: $0) }
            var value: UInt8 = 0
            withUnsafeMutableBytes(of: &value) { rtc.read(offset: 1, into: $0) }
            return value
        }
        for mode: UInt8 in [0x82, 0x86, 0x80, 0x02, 0x06] {
            write(0x0B, mode)
            for register: UInt8 in [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32] {
                for value: UInt8 in [0xFF, 0x9A, 0x00, 0x7F] {
                    write(register, value)
                    _ = read(register)
                }
            }
        }
        write(0x0B, 0x02)
        #expect(read(0x00) <= 0x59)
    }
}

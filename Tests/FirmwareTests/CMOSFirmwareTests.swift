import Devices
import Testing

/// The CMOS bytes PC firmware reads at boot.
@Suite struct CMOSFirmwareTests {
    static func register(_ rtc: CMOSRTC, _ index: UInt8) -> UInt8 {
        withUnsafeBytes(of: index) { rtc.write(offset: 0, from: $0) }
        var value: UInt8 = 0
        withUnsafeMutableBytes(of: &value) { rtc.read(offset: 1, into: $0) }
        return value
    }

    @Test func memorySizes() {
        let rtc = CMOSRTC(memoryBelow4GiB: 0xC000_0000, memoryAbove4GiB: 0x4000_0000, clock: { 0 })
        #expect(Self.register(rtc, 0x15) == 0x80 && Self.register(rtc, 0x16) == 0x02)
        for low in [UInt8(0x17), 0x30] {
            #expect(Self.register(rtc, low) == 0xFF && Self.register(rtc, low + 1) == 0xFF, "capped at 0xFFFF KiB")
        }
        #expect(Self.register(rtc, 0x34) == 0x00 && Self.register(rtc, 0x35) == 0xBF)
        #expect(Self.register(rtc, 0x5B) == 0x00 && Self.register(rtc, 0x5C) == 0x40 && Self.register(rtc, 0x5D) == 0x00)

        let small = CMOSRTC(memoryBelow4GiB: 32 << 20, clock: { 0 })
        #expect(Self.register(small, 0x17) == 0x00 && Self.register(small, 0x18) == 0x7C)  // 31 MiB = 0x7C00 KiB
    }

    @Test func bootOrder() {
        let rtc = CMOSRTC(bootOrder: [.cdrom, .disk, .network], clock: { 0 })
        #expect(Self.register(rtc, 0x3D) == 0x23)
        #expect(Self.register(rtc, 0x38) == 0x41)
        let none = CMOSRTC(clock: { 0 })
        #expect(Self.register(none, 0x3D) == 0)
        #expect(Self.register(none, 0x38) == 0x01)
    }
}

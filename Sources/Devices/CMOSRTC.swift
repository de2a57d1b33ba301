import Glibc
import Synchronization

/// An MC146818 real-time clock with its 128 bytes of CMOS RAM, at ports 0x70 (index) and 0x71 (data).
///
/// The clock reads the host's time (UTC unless `clock` says otherwise), starting in BCD, 24-hour mode as a PC BIOS
/// leaves it; guests may switch register B to binary or 12-hour mode. Guest writes to the time and date registers
/// move the guest's clock by an offset from host time (held while register B's SET bit is on, applied when it clears);
/// the day of the week is always derived from the date. Nothing raises IRQ 8: periodic, alarm and update-ended
/// interrupts are not emulated, though register C reports the update-ended flag once per elapsed second and clears
/// on read. Every other byte is plain NVRAM.
public final class CMOSRTC: BusDevice {
    /// The index port; the data port follows it.
    public static let port: UInt64 = 0x70
    /// Ports the device occupies from `port`.
    public static let portSpan: UInt64 = 2

    /// Register indices.
    enum Register {
        static let seconds: UInt8 = 0x00
        static let minutes: UInt8 = 0x02
        static let hours: UInt8 = 0x04
        static let dayOfWeek: UInt8 = 0x06
        static let dayOfMonth: UInt8 = 0x07
        static let month: UInt8 = 0x08
        static let year: UInt8 = 0x09
        static let a: UInt8 = 0x0A
        static let b: UInt8 = 0x0B
        static let c: UInt8 = 0x0C
        static let d: UInt8 = 0x0D
        static let century: UInt8 = 0x32
    }

    /// Register B bits.
    enum ModeBit {
        static let set: UInt8 = 0x80
        static let binary: UInt8 = 0x04
        static let twentyFourHour: UInt8 = 0x02
    }

    /// A calendar time, with fields as `struct tm` holds them but a full year and 1-based month.
    struct DateTime {
        var second: Int
        var minute: Int
        var hour: Int
        var day: Int
        var month: Int
        var year: Int

        /// Day of the week, 0 for Sunday; 1 January 1970 was a Thursday.
        var weekday: Int {
            let seconds = CMOSRTC.epochSeconds(of: self)
            let days = (seconds - (seconds < 0 ? 86_399 : 0)) / 86_400  // rounded toward negative infinity
            return Int(((days + 4) % 7 + 7) % 7)
        }
    }

    struct State {
        var index: UInt8 = 0
        var ram = [UInt8](repeating: 0, count: 128)
        /// Seconds added to the clock's reading to give the guest's time.
        var offset: Int64 = 0
        /// The time being set while register B's SET bit is on.
        var staged: DateTime?
        /// The guest-time second at which register C was last read.
        var lastFlagSecond: Int64
    }

    private let state: Mutex<State>
    private let clock: @Sendable () -> Int64

    /// A boot device class as PC firmware reads it from CMOS 0x3D and 0x38 (the codes QEMU and SeaBIOS use).
    public enum BootDevice: UInt8, Sendable {
        case floppy = 1
        case disk = 2
        case cdrom = 3
        case network = 4
    }

    /// - Parameters:
    ///   - memoryBelow4GiB: bytes of guest RAM below 4 GiB; CMOS 0x34–0x35 report what lies above 16 MiB,
    ///     0x17–0x18 and 0x30–0x31 the KiB above 1 MiB (at most 0xFFFF); 0x15–0x16 report 640 KiB of base memory.
    ///   - memoryAbove4GiB: bytes of guest RAM above 4 GiB; CMOS 0x5B–0x5D report it.
    ///   - bootOrder: up to three device classes in boot priority order, in 0x3D and 0x38 (whose bit 0 also turns
    ///     off the floppy boot-signature check).
    ///   - clock: seconds since the Unix epoch of the time the RTC shows before any guest write.
    public init(
        memoryBelow4GiB: UInt64 = 0,
        memoryAbove4GiB: UInt64 = 0,
        bootOrder: [BootDevice] = [],
        clock: @escaping @Sendable () -> Int64 = CMOSRTC.hostClock
    ) {
        self.clock = clock
        var state = State(lastFlagSecond: clock())
        state.ram[Int(Register.a)] = 0x26  // 32.768 kHz time base, 1024 Hz rate; UIP clear
        state.ram[Int(Register.b)] = ModeBit.twentyFourHour
        state.ram[0x15] = 0x80  // 640 KiB of base memory
        state.ram[0x16] = 0x02
        let above1MiB = min((memoryBelow4GiB > 1 << 20 ? memoryBelow4GiB - (1 << 20) : 0) >> 10, 0xFFFF)
        for index in [0x17, 0x30] {
            state.ram[index] = UInt8(truncatingIfNeeded: above1MiB)
            state.ram[index + 1] = UInt8(truncatingIfNeeded: above1MiB >> 8)
        }
        let codes = bootOrder.prefix(3).map(\.rawValue) + [0, 0, 0]
        state.ram[0x3D] = codes[0] | codes[1] << 4
        state.ram[0x38] = codes[2] << 4 | 1
        let above16MiB = min((memoryBelow4GiB > 16 << 20 ? memoryBelow4GiB - (16 << 20) : 0) >> 16, 0xFFFF)
        state.ram[0x34] = UInt8(truncatingIfNeeded: above16MiB)
        state.ram[0x35] = UInt8(truncatingIfNeeded: above16MiB >> 8)
        let above4GiB = min(memoryAbove4GiB >> 16, 0xFF_FFFF)
        for byte in 0..<3 { state.ram[0x5B + byte] = UInt8(truncatingIfNeeded: above4GiB >> (8 * UInt64(byte))) }
        self.state = Mutex(state)
    }

    /// The host's `CLOCK_REALTIME`, in whole seconds since the epoch.
    public static func hostClock() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec)
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for position in data.indices {
            // The index port is write-only and floats high.
            data[position] = offset + UInt64(position) == 1 ? readData() : 0xFF
        }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        for (position, value) in data.enumerated() {
            switch offset + UInt64(position) {
            case 0: state.withLock { $0.index = value & 0x7F }  // bit 7 masks NMI, which the VMM does not model
            case 1: writeData(value)
            default: break
            }
        }
    }

    /// The value of the selected register.
    func readData() -> UInt8 {
        state.withLock { state in
            let index = state.index
            let mode = state.ram[Int(Register.b)]
            switch index {
            case Register.seconds, Register.minutes, Register.hours, Register.dayOfWeek, Register.dayOfMonth,
                Register.month, Register.year, Register.century:
                let time = state.staged ?? Self.dateTime(at: clock() + state.offset)
                return Self.encode(Self.field(index, of: time), register: index, mode: mode)
            case Register.c:
                let now = clock() + state.offset
                var flags: UInt8 = 0
                if now != state.lastFlagSecond {
                    flags = 0x10  // UF: an update cycle has ended since the last read
                    if mode & 0x10 != 0 { flags |= 0x80 }  // IRQF follows UF when UIE is set
                }
                state.lastFlagSecond = now
                return flags
            case Register.d:
                return 0x80  // valid RAM and time
            default:
                return state.ram[Int(index)]
            }
        }
    }

    /// Stores `value` into the selected register.
    func writeData(_ value: UInt8) {
        state.withLock { state in
            let index = state.index
            let mode = state.ram[Int(Register.b)]
            switch index {
            case Register.seconds, Register.minutes, Register.hours, Register.dayOfMonth, Register.month,
                Register.year, Register.century:
                let hostNow = clock()
                var time = state.staged ?? Self.dateTime(at: hostNow + state.offset)
                Self.setField(index, of: &time, to: Self.decode(value, register: index, mode: mode))
                if state.staged != nil {
                    state.staged = time
                } else {
                    state.offset = Self.epochSeconds(of: time) - hostNow
                }
            case Register.a:
                state.ram[Int(index)] = value & 0x7F  // UIP is read-only
            case Register.b:
                let hostNow = clock()
                if value & ModeBit.set != 0, state.staged == nil {
                    state.staged = Self.dateTime(at: hostNow + state.offset)
                } else if value & ModeBit.set == 0, let staged = state.staged {
                    state.offset = Self.epochSeconds(of: staged) - hostNow
                    state.staged = nil
                }
                state.ram[Int(index)] = value
            case Register.dayOfWeek, Register.c, Register.d:
                break  // derived or read-only
            default:
                state.ram[Int(index)] = value
            }
        }
    }

    private static func field(_ register: UInt8, of time: DateTime) -> Int {
        switch register {
        case Register.seconds: time.second
        case Register.minutes: time.minute
        case Register.hours: time.hour
        case Register.dayOfWeek: time.weekday + 1
        case Register.dayOfMonth: time.day
        case Register.month: time.month
        case Register.year: time.year % 100
        default: time.year / 100
        }
    }

    /// Stores a guest-written field, clamped to the range the register can hold: the guest may write any byte.
    private static func setField(_ register: UInt8, of time: inout DateTime, to value: Int) {
        func clamp(_ range: ClosedRange<Int>) -> Int { min(max(value, range.lowerBound), range.upperBound) }
        switch register {
        case Register.seconds: time.second = clamp(0...59)
        case Register.minutes: time.minute = clamp(0...59)
        case Register.hours: time.hour = clamp(0...23)
        case Register.dayOfMonth: time.day = clamp(1...31)
        case Register.month: time.month = clamp(1...12)
        case Register.year: time.year = time.year / 100 * 100 + clamp(0...99)
        default: time.year = clamp(19...99) * 100 + time.year % 100
        }
    }

    /// `value` in the register format `mode` selects: BCD or binary, and for hours 12-hour with bit 7 for PM.
    static func encode(_ value: Int, register: UInt8, mode: UInt8) -> UInt8 {
        var number = value
        var pm: UInt8 = 0
        if register == Register.hours, mode & ModeBit.twentyFourHour == 0 {
            pm = value >= 12 ? 0x80 : 0
            number = value % 12 == 0 ? 12 : value % 12
        }
        let digits = number % 100
        let encoded = mode & ModeBit.binary != 0 ? UInt8(truncatingIfNeeded: number) : UInt8((digits / 10) << 4 | digits % 10)
        return encoded | pm
    }

    /// The number a register byte in `mode`'s format holds; hours come back in 24-hour form.
    static func decode(_ byte: UInt8, register: UInt8, mode: UInt8) -> Int {
        let twelveHour = register == Register.hours && mode & ModeBit.twentyFourHour == 0
        let digits = twelveHour ? byte & 0x7F : byte
        let number = mode & ModeBit.binary != 0 ? Int(digits) : Int(digits >> 4) * 10 + Int(digits & 0x0F)
        guard twelveHour else { return number }
        return number % 12 + (byte & 0x80 != 0 ? 12 : 0)
    }

    /// The UTC calendar time `seconds` after the epoch.
    static func dateTime(at seconds: Int64) -> DateTime {
        var time = time_t(seconds)
        var fields = tm()
        gmtime_r(&time, &fields)
        return DateTime(
            second: Int(fields.tm_sec), minute: Int(fields.tm_min), hour: Int(fields.tm_hour), day: Int(fields.tm_mday),
            month: Int(fields.tm_mon) + 1, year: Int(fields.tm_year) + 1900)
    }

    /// Seconds since the epoch of a UTC calendar time; out-of-range fields carry over as `timegm` normalizes them.
    static func epochSeconds(of time: DateTime) -> Int64 {
        var fields = tm()
        fields.tm_sec = Int32(time.second)
        fields.tm_min = Int32(time.minute)
        fields.tm_hour = Int32(time.hour)
        fields.tm_mday = Int32(time.day)
        fields.tm_mon = Int32(time.month - 1)
        fields.tm_year = Int32(time.year - 1900)
        return Int64(timegm(&fields))
    }
}

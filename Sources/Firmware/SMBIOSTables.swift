import ACPI

/// The SMBIOS structures firmware publishes (DMTF DSP0134 3.0): a 64-bit entry point and the structure table, as
/// the fw_cfg files `etc/smbios/smbios-anchor` and `etc/smbios/smbios-tables`. The firmware places the table, fills
/// in its address and fixes the entry point's checksum; it adds its own BIOS information (type 0).
public struct SMBIOSTables: Sendable, Equatable {
    public static let anchorFile = "etc/smbios/smbios-anchor"
    public static let tablesFile = "etc/smbios/smbios-tables"
    /// Length of the SMBIOS 3.0 entry point.
    public static let anchorLength = 24

    /// The entry point, with a zero table address.
    public let anchor: [UInt8]
    /// The structures, ending with the end-of-table structure (type 127).
    public let tables: [UInt8]

    /// - Parameters:
    ///   - vcpuCount: one processor structure (type 4) each.
    ///   - memoryRanges: guest RAM as (guest address, bytes); one memory device and one mapped range each.
    ///   - uuid: the system UUID (type 1), in SMBIOS byte order.
    public init(vcpuCount: Int, memoryRanges: [(address: UInt64, size: UInt64)], uuid: [UInt8] = Array(repeating: 0, count: 16)) {
        var structures: [[UInt8]] = []
        var handle: UInt16 = 0x100
        func add(_ type: UInt8, _ fields: [UInt8], strings: [String] = []) {
            var bytes: [UInt8] = [type, UInt8(4 + fields.count)] + littleEndianBytes(handle) + fields
            for string in strings { bytes += Array(string.utf8) + [0] }
            bytes += strings.isEmpty ? [0, 0] : [0]
            structures.append(bytes)
            handle += 1
        }
        func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { littleEndianBytes(value) }

        // Type 1, system information: manufacturer, product, version; UUID; woken by the power switch.
        add(1, [1, 2, 3, 0] + uuid.prefix(16) + repeatElement(0, count: max(0, 16 - uuid.count)) + [6, 0, 0],
            strings: ["Tern", "Tern VM", "1"])
        // Type 4, one per vCPU: a central processor, enabled, one core and thread.
        for cpu in 0..<vcpuCount {
            var fields: [UInt8] = [1, 3, 1, 2] + repeatElement(0, count: 8) + [0, 0]
            fields += le(UInt16(0)) + le(UInt16(2000)) + le(UInt16(2000))
            fields += [0x41, 1] + le(UInt16(0xFFFF)) + le(UInt16(0xFFFF)) + le(UInt16(0xFFFF))
            fields += [0, 0, 0, 1, 1, 1] + le(UInt16(0x0002)) + le(UInt16(1))
            add(4, fields, strings: ["CPU \(cpu)", "Tern"])
        }
        let total = memoryRanges.reduce(UInt64(0)) { $0 + $1.size }
        let arrayHandle = handle
        // Type 16, the physical memory array: system memory, no error correction, one device. Its capacity is in KiB
        // below 2 TiB; from there the field holds 0x80000000 and the extended field the capacity in bytes.
        let kibibytes = total >> 10
        let capacity = kibibytes < 0x8000_0000 ? (UInt32(kibibytes), UInt64(0)) : (UInt32(0x8000_0000), total)
        add(16, [1, 3, 3] + le(capacity.0) + le(UInt16(0xFFFE)) + le(UInt16(1)) + le(capacity.1))
        // Type 17, one DIMM holding all of RAM (size in MiB through the extended field when it needs it).
        let mebibytes = total >> 20
        var device: [UInt8] = le(arrayHandle) + le(UInt16(0xFFFE)) + le(UInt16(64)) + le(UInt16(64))
        device += le(mebibytes < 0x7FFF ? UInt16(mebibytes) : 0x7FFF)
        device += [0x09, 0, 1, 0, 0x07] + le(UInt16(0x0002)) + le(UInt16(0)) + [0, 0, 0, 0, 0]
        device += le(UInt32(clamping: mebibytes)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt16(0))
        add(17, device, strings: ["DIMM 0"])
        // Type 19, each RAM range in KiB (the extended fields carry it when it passes 4 TiB).
        for range in memoryRanges where range.size > 0 {
            let start = range.address >> 10
            let end = (range.address + range.size - 1) >> 10
            if end < 0xFFFF_FFFF {
                add(19, le(UInt32(start)) + le(UInt32(end)) + le(arrayHandle) + [1] + le(UInt64(0)) + le(UInt64(0)))
            } else {
                add(19, le(UInt32.max) + le(UInt32.max) + le(arrayHandle) + [1] + le(range.address) + le(range.address + range.size - 1))
            }
        }
        // Type 32, system boot information: no errors.
        add(32, repeatElement(0, count: 6) + [0])
        add(127, [])

        tables = structures.flatMap { $0 }
        var anchor = Array("_SM3_".utf8) + [0, UInt8(Self.anchorLength), 3, 0, 0, 1, 0]
        anchor += le(UInt32(tables.count)) + le(UInt64(0))
        anchor[5] = 0 &- anchor.reduce(0, &+)
        self.anchor = anchor
    }
}

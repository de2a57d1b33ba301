/// An Ethernet (EUI-48) unicast address, as a virtio-net device reports it in its configuration space.
public struct MACAddress: Sendable, Hashable, CustomStringConvertible {
    /// The six bytes in transmission order, in the low 48 bits (the first byte is bits 40–47).
    public let rawValue: UInt64

    /// The address whose bytes, in order, are the low 48 bits of `rawValue`; it must be unicast.
    public init?(rawValue: UInt64) {
        guard rawValue >> 48 == 0, rawValue >> 40 & 1 == 0 else { return nil }
        self.rawValue = rawValue
    }

    /// Parses six colon-separated two-digit hexadecimal bytes, like `52:54:00:12:34:56`.
    public init(parsing text: String) throws(MACAddressError) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        var value: UInt64 = 0
        for part in parts {
            guard parts.count == 6, part.count == 2, part.allSatisfy(\.isHexDigit), let byte = UInt8(part, radix: 16) else {
                throw MACAddressError("'\(text)' is not a MAC address; write six hex bytes like 52:54:00:12:34:56")
            }
            value = value << 8 | UInt64(byte)
        }
        guard let address = MACAddress(rawValue: value) else {
            throw MACAddressError("'\(text)' is a multicast address; the first byte must be even, like 52:54:00:12:34:56")
        }
        self = address
    }

    /// A locally administered address: 52:54:00 followed by the low 24 bits of `suffix`.
    public static func locallyAdministered(suffix: UInt32) -> MACAddress {
        MACAddress(rawValue: 0x52_54_00 << 24 | UInt64(suffix & 0xFF_FFFF))!
    }

    /// Byte `index` (0–5) in transmission order.
    public subscript(index: Int) -> UInt8 {
        precondition((0..<6).contains(index), "MAC address byte \(index) is not in 0..<6")
        return UInt8(truncatingIfNeeded: rawValue >> (8 * UInt64(5 - index)))
    }

    public var description: String {
        (0..<6).map { index in
            let digits = String(self[index], radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }.joined(separator: ":")
    }
}

/// Why a MAC address could not be parsed; the description names the problem and the fix.
public struct MACAddressError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) { self.description = description }
}

/// A PCI function's place on segment 0: bus, device (slot) and function number.
public struct PCIAddress: Sendable, Hashable, CustomStringConvertible {
    public let bus: UInt8
    /// Device number, 0–31.
    public let device: UInt8
    /// Function number, 0–7.
    public let function: UInt8

    public init(bus: UInt8 = 0, device: UInt8, function: UInt8 = 0) {
        precondition(device < 32 && function < 8, "PCI device \(device) function \(function) out of range")
        self.bus = bus
        self.device = device
        self.function = function
    }

    /// `bb:dd.f` in hexadecimal, as lspci prints it.
    public var description: String {
        func hex(_ value: UInt8) -> String { (value < 16 ? "0" : "") + String(value, radix: 16) }
        return "\(hex(bus)):\(hex(device)).\(function)"
    }
}

/// A legacy interrupt pin, INTA# to INTD#, as the Interrupt Pin register numbers them (1–4).
public enum PCIInterruptPin: UInt8, Sendable, CaseIterable {
    case intA = 1, intB, intC, intD
}

/// Tern's INTx wiring, which the DSDT's `_PRT` states and the VMM must match: pin `p` (INTA = 0) of slot `s`
/// drives IOAPIC input `16 + (s + p) mod 8`, the PCI-to-PCI bridge swizzle applied to GSIs 16–23. The lines are
/// level-triggered and shared between slots (and with virtio-mmio devices on the same inputs), so the VMM ORs
/// every source of one GSI (see `SharedInterruptLine`). KVM's IOAPIC treats a line's level as "asserted" whatever
/// polarity the guest programs, so the active-low polarity Linux assumes for `_PRT` GSIs is harmless.
public enum PCIInterruptRouting {
    /// The first IOAPIC input PCI interrupts use.
    public static let firstGSI: UInt32 = 16
    /// How many consecutive IOAPIC inputs they are spread over.
    public static let gsiCount: UInt32 = 8

    /// The GSI that `pin` of device `slot` drives.
    public static func gsi(slot: UInt8, pin: PCIInterruptPin) -> UInt32 {
        firstGSI + (UInt32(slot) + UInt32(pin.rawValue - 1)) % gsiCount
    }
}

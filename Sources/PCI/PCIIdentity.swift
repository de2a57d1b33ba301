/// The class code: base class, subclass and programming interface (PCI Code and ID Assignment 1.x).
public struct PCIClassCode: Sendable, Equatable {
    public var base: UInt8
    public var subclass: UInt8
    public var programmingInterface: UInt8

    public init(base: UInt8, subclass: UInt8, programmingInterface: UInt8 = 0) {
        self.base = base
        self.subclass = subclass
        self.programmingInterface = programmingInterface
    }

    /// 06/00/00: host bridge.
    public static let hostBridge = Self(base: 0x06, subclass: 0x00)
}

/// The read-only identity registers of a type-0 configuration header.
public struct PCIIdentity: Sendable, Equatable {
    public var vendorID: UInt16
    public var deviceID: UInt16
    public var revision: UInt8
    public var classCode: PCIClassCode
    public var subsystemVendorID: UInt16
    public var subsystemID: UInt16

    public init(
        vendorID: UInt16, deviceID: UInt16, revision: UInt8, classCode: PCIClassCode, subsystemVendorID: UInt16 = 0,
        subsystemID: UInt16 = 0
    ) {
        self.vendorID = vendorID
        self.deviceID = deviceID
        self.revision = revision
        self.classCode = classCode
        self.subsystemVendorID = subsystemVendorID
        self.subsystemID = subsystemID
    }
}

/// The Command register bits Tern's functions implement (PCI Local Bus 3.0 §6.2.2); the rest read as zero.
public struct PCICommand: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16

    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The function decodes its memory BARs.
    public static let memorySpace = Self(rawValue: 1 << 1)
    /// The function may master the bus (DMA, MSI writes).
    public static let busMaster = Self(rawValue: 1 << 2)
    /// The function must not assert its INTx# pin.
    public static let interruptDisable = Self(rawValue: 1 << 10)
}

/// The width of a memory BAR's address (PCI Local Bus 3.0 §6.2.5.1). Tern has no port-I/O BARs.
public enum PCIBARKind: Sendable, Equatable {
    /// One register, decoded anywhere below 4 GiB.
    case memory32
    /// Two consecutive registers, decoded anywhere in the 64-bit space.
    case memory64
}

/// A memory BAR a function implements.
public struct PCIBAR: Sendable, Equatable {
    public var kind: PCIBARKind
    /// Size in bytes: a power of two, at least 16 (4 KiB or more keeps each BAR on its own pages).
    public var size: UInt64
    public var prefetchable: Bool

    public init(kind: PCIBARKind, size: UInt64, prefetchable: Bool = false) {
        self.kind = kind
        self.size = size
        self.prefetchable = prefetchable
    }
}

/// A BAR the function decodes right now: memory space is enabled and the programmed range does not wrap.
public struct PCIMappedBAR: Sendable, Equatable {
    /// The BAR's register number, 0–5 (a 64-bit BAR is numbered by its low register).
    public var index: Int
    public var base: UInt64
    public var size: UInt64

    public init(index: Int, base: UInt64, size: UInt64) {
        self.index = index
        self.base = base
        self.size = size
    }
}

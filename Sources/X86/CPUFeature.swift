/// A feature flag that CPUID reports: its leaf, subleaf, register and bit.
public struct CPUFeature: Hashable, Sendable, CustomStringConvertible {
    public enum Register: Hashable, Sendable { case eax, ebx, ecx, edx }

    /// The name /proc/cpuinfo gives the flag.
    public let name: String
    public let leaf: UInt32
    public let subleaf: UInt32
    public let register: Register
    public let bit: Int
    /// The feature's instructions use registers that XSAVE manages (YMM, ZMM, opmask), so an operating system enables
    /// it only with XSAVE; Linux drops it by itself when XSAVE is off.
    public let needsExtendedState: Bool

    public init(_ name: String, leaf: UInt32, subleaf: UInt32 = 0, _ register: Register, bit: Int, needsExtendedState: Bool = false) {
        precondition((0..<32).contains(bit), "a CPUID register has 32 bits")
        self.name = name
        self.leaf = leaf
        self.subleaf = subleaf
        self.register = register
        self.bit = bit
        self.needsExtendedState = needsExtendedState
    }

    public var mask: UInt32 { 1 << UInt32(bit) }

    public var description: String { name }

    /// Linux's number for the flag (32 × its capability word + bit), which the `clearcpuid=` parameter takes; nil for
    /// registers Linux does not keep as one capability word.
    public var linuxNumber: Int? {
        let word: Int
        switch (leaf, subleaf, register) {
        case (1, _, .edx): word = 0
        case (0x8000_0001, _, .edx): word = 1
        case (1, _, .ecx): word = 4
        case (0x8000_0001, _, .ecx): word = 6
        case (7, 0, .ebx): word = 9
        case (7, 1, .eax): word = 12
        case (7, 0, .ecx): word = 16
        case (7, 0, .edx): word = 18
        default: return nil
        }
        return word * 32 + bit
    }
}

extension CPUIDEntry {
    /// Clears `feature` if this entry is the leaf and subleaf that report it.
    public mutating func withhold(_ feature: CPUFeature) {
        guard function == feature.leaf, index == feature.subleaf else { return }
        switch feature.register {
        case .eax: eax &= ~feature.mask
        case .ebx: ebx &= ~feature.mask
        case .ecx: ecx &= ~feature.mask
        case .edx: edx &= ~feature.mask
        }
    }

    /// Whether this entry is the leaf and subleaf that report `feature` and reports it present.
    public func reports(_ feature: CPUFeature) -> Bool {
        guard function == feature.leaf, index == feature.subleaf else { return false }
        switch feature.register {
        case .eax: return eax & feature.mask != 0
        case .ebx: return ebx & feature.mask != 0
        case .ecx: return ecx & feature.mask != 0
        case .edx: return edx & feature.mask != 0
        }
    }
}

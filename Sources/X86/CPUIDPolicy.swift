/// The CPUID a guest sees, derived from what the host's KVM supports.
///
/// The policy never adds a feature the host cannot provide. It only rewrites topology fields for the
/// configured vCPU count, sets the hypervisor-present bit, trims KVM paravirtual features that need
/// VMM support Tern does not implement, and adds Tern's identification leaves after KVM's.
public struct CPUIDPolicy: Sendable {
    /// The base of KVM's paravirtual leaves; Linux looks for the "KVMKVMKVM" signature here.
    public static let kvmBase: UInt32 = 0x4000_0000
    /// Tern's own signature leaf ("TernTernTern"), one block above KVM's.
    public static let ternBase: UInt32 = 0x4000_0100
    /// KVM paravirtual feature bits (CPUID 0x40000001 EAX) Tern does not offer because they need VMM exits it does not handle.
    public static let withheldParavirtualFeatures: UInt32 = (1 << 16) | (1 << 17)  // HC_MAP_GPA_RANGE, MIGRATION_CONTROL

    public let vcpuCount: Int
    /// Withhold what a software-virtualisation host cannot run in guest ring 0: `SoftwareVirtualization.withheldFeatures`
    /// and leaf 0xD (XSAVE state).
    public let softwareVirtualization: Bool
    private let supported: [CPUIDEntry]

    /// - Parameters:
    ///   - supported: KVM_GET_SUPPORTED_CPUID's entries.
    ///   - vcpuCount: vCPUs in the guest, all cores of one socket with one thread each.
    ///   - softwareVirtualization: the host runs guest ring 0 in an instruction emulator; withhold what it cannot run.
    public init(supported: [CPUIDEntry], vcpuCount: Int, softwareVirtualization: Bool = false) {
        precondition(vcpuCount >= 1, "a guest has at least one vCPU")
        self.supported = supported
        self.vcpuCount = vcpuCount
        self.softwareVirtualization = softwareVirtualization
    }

    /// Bits of an APIC ID that number cores within the package.
    public var coreIDBits: UInt32 {
        var bits: UInt32 = 0
        while (1 << bits) < vcpuCount { bits += 1 }
        return bits
    }

    /// The entries for vCPU `index`, whose APIC ID equals its index.
    public func entries(forVCPU index: Int) -> [CPUIDEntry] {
        let apicID = UInt32(index)
        let idsPerPackage = UInt32(1) << coreIDBits
        var result: [CPUIDEntry] = []
        result.reserveCapacity(supported.count + 2)
        for var entry in supported {
            if softwareVirtualization {
                if entry.function == 0xD { continue }
                for feature in SoftwareVirtualization.withheldFeatures { entry.withhold(feature) }
            }
            switch entry.function {
            case 0x1:
                entry.ebx = (entry.ebx & 0x0000_FFFF) | (apicID << 24) | (min(idsPerPackage, 255) << 16)
                entry.ecx |= 1 << 31  // hypervisor present
                if vcpuCount > 1 { entry.edx |= 1 << 28 } else { entry.edx &= ~(1 << 28) }  // HTT
            case 0x4:
                guard entry.eax & 0x1F != 0 else { break }  // no cache at this subleaf
                let level = (entry.eax >> 5) & 0x7
                let sharing: UInt32 = level >= 3 ? idsPerPackage - 1 : 0
                entry.eax = (entry.eax & 0x0000_3FFF) | ((sharing & 0xFFF) << 14) | (((idsPerPackage - 1) & 0x3F) << 26)
            case 0xB, 0x1F:
                entry = topologyLeaf(function: entry.function, subleaf: entry.index, apicID: apicID)
            case 0x8000_0008:
                entry.ecx = (entry.ecx & ~0xF0FF) | (coreIDBits << 12) | UInt32(vcpuCount - 1)
            case Self.kvmBase:
                entry.eax = max(entry.eax, Self.kvmBase + 1)
            case Self.kvmBase + 1:
                entry.eax &= ~Self.withheldParavirtualFeatures
            default:
                break
            }
            result.append(entry)
        }
        result.append(contentsOf: ternLeaves)
        return result
    }

    private func topologyLeaf(function: UInt32, subleaf: UInt32, apicID: UInt32) -> CPUIDEntry {
        var entry = CPUIDEntry(function: function, index: subleaf, flags: CPUIDEntry.significantIndex, edx: apicID)
        switch subleaf {
        case 0:  // SMT level: one thread per core
            entry.eax = 0
            entry.ebx = 1
            entry.ecx = (1 << 8) | subleaf
        case 1:  // core level: every vCPU in one package
            entry.eax = coreIDBits
            entry.ebx = UInt32(vcpuCount)
            entry.ecx = (2 << 8) | subleaf
        default:  // invalid level ends the enumeration
            entry.ecx = subleaf
        }
        return entry
    }

    private var ternLeaves: [CPUIDEntry] {
        // "TernTernTern" in EBX, ECX, EDX; EAX names the highest leaf of this block.
        let tern = UInt32(0x6E72_6554)  // "Tern" little-endian
        return [
            CPUIDEntry(function: Self.ternBase, eax: Self.ternBase + 1, ebx: tern, ecx: tern, edx: tern),
            CPUIDEntry(function: Self.ternBase + 1, eax: CPUIDPolicy.interfaceVersion),
        ]
    }

    /// Version of Tern's CPUID identification interface, reported in leaf 0x40000101 EAX.
    public static let interfaceVersion: UInt32 = 1
}

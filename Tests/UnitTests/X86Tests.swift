import Testing
import X86

@Suite struct CPUIDPolicyTests {
    let supported = [
        CPUIDEntry(function: 0, eax: 0x1F, ebx: 0x756E_6547),
        CPUIDEntry(function: 1, eax: 0x906EA, ebx: 0x0010_0800, ecx: 0x7FFA_FBFF, edx: 0x1FEB_FBFF),
        CPUIDEntry(function: 4, index: 0, flags: 1, eax: 0x1C00_4121),
        CPUIDEntry(function: 4, index: 3, flags: 1, eax: 0x1C03_C163),
        CPUIDEntry(function: 4, index: 4, flags: 1, eax: 0),
        CPUIDEntry(function: 0xB, index: 0, flags: 1, eax: 1, ebx: 2, ecx: 0x100),
        CPUIDEntry(function: 0xB, index: 1, flags: 1, eax: 4, ebx: 8, ecx: 0x201),
        CPUIDEntry(function: 0x4000_0000, eax: 0x4000_0001, ebx: 0x4B4D_564B, ecx: 0x564B_4D56, edx: 0x4D),
        CPUIDEntry(function: 0x4000_0001, eax: 0x0103_FEFF),
        CPUIDEntry(function: 0x8000_0008, eax: 0x3027, ecx: 0xF00F),
    ]

    func entry(_ entries: [CPUIDEntry], _ function: UInt32, _ index: UInt32 = 0) -> CPUIDEntry? {
        entries.first { $0.function == function && $0.index == index }
    }

    @Test func setsAPICIDAndLogicalCountInLeaf1() throws {
        let policy = CPUIDPolicy(supported: supported, vcpuCount: 3)
        let leaf = try #require(entry(policy.entries(forVCPU: 2), 1))
        #expect(leaf.ebx >> 24 == 2)
        #expect((leaf.ebx >> 16) & 0xFF == 4)
        #expect(leaf.ebx & 0xFFFF == 0x0800)
        #expect(leaf.ecx & (1 << 31) != 0)
        #expect(leaf.edx & (1 << 28) != 0)
        #expect(leaf.eax == 0x906EA)
    }

    @Test func singleVCPUHasNoHTT() throws {
        let leaf = try #require(entry(CPUIDPolicy(supported: supported, vcpuCount: 1).entries(forVCPU: 0), 1))
        #expect(leaf.edx & (1 << 28) == 0)
        #expect((leaf.ebx >> 16) & 0xFF == 1)
    }

    @Test func describesTopologyInLeafB() throws {
        let entries = CPUIDPolicy(supported: supported, vcpuCount: 6).entries(forVCPU: 5)
        let smt = try #require(entry(entries, 0xB, 0))
        let core = try #require(entry(entries, 0xB, 1))
        #expect(smt.eax == 0 && smt.ebx == 1 && smt.ecx == 0x100 && smt.edx == 5)
        #expect(core.eax == 3 && core.ebx == 6 && core.ecx == 0x201 && core.edx == 5)
    }

    @Test func cacheLeafCountsCores() throws {
        let entries = CPUIDPolicy(supported: supported, vcpuCount: 4).entries(forVCPU: 0)
        let l1 = try #require(entry(entries, 4, 0))
        let l3 = try #require(entry(entries, 4, 3))
        #expect(l1.eax >> 26 == 3)
        #expect((l1.eax >> 14) & 0xFFF == 0)
        #expect((l3.eax >> 14) & 0xFFF == 3)
        #expect(try #require(entry(entries, 4, 4)).eax == 0)
    }

    @Test func amdCoreCount() throws {
        let leaf = try #require(entry(CPUIDPolicy(supported: supported, vcpuCount: 4).entries(forVCPU: 0), 0x8000_0008))
        #expect(leaf.ecx & 0xFF == 3)
        #expect((leaf.ecx >> 12) & 0xF == 2)
    }

    @Test func keepsKVMSignatureAndWithholdsUnsupportedParavirtFeatures() throws {
        let entries = CPUIDPolicy(supported: supported, vcpuCount: 1).entries(forVCPU: 0)
        let signature = try #require(entry(entries, 0x4000_0000))
        #expect(signature.ebx == 0x4B4D_564B)
        let features = try #require(entry(entries, 0x4000_0001))
        #expect(features.eax & CPUIDPolicy.withheldParavirtualFeatures == 0)
        #expect(features.eax & 1 == 1)  // kvmclock stays
        let tern = try #require(entry(entries, CPUIDPolicy.ternBase))
        let name = [tern.ebx, tern.ecx, tern.edx].flatMap { value in (0..<4).map { UInt8((value >> ($0 * 8)) & 0xFF) } }
        #expect(String(decoding: name, as: UTF8.self) == "TernTernTern")
    }

    @Test func neverAddsFeatureBitsTheHostLacks() {
        let policy = CPUIDPolicy(supported: supported, vcpuCount: 8)
        for index in 0..<8 {
            for produced in policy.entries(forVCPU: index) where produced.function == 1 {
                let host = supported[1]
                #expect(produced.ecx & ~host.ecx == 1 << 31)  // only the hypervisor bit is new
                #expect(produced.edx & ~host.edx == 0)
            }
        }
    }
}

@Suite struct BootStateTests {
    @Test func gdtDescriptorsEncodeFlatSegments() {
        let gdt32 = BootState.bootGDT(longMode: false)
        #expect(gdt32[2] == 0x00CF_9B00_0000_FFFF)
        #expect(gdt32[3] == 0x00CF_9300_0000_FFFF)
        let gdt64 = BootState.bootGDT(longMode: true)
        #expect(gdt64[2] == 0x00AF_9B00_0000_FFFF)
        #expect(gdt64[4] == 0x0000_8B00_0000_0067)
    }

    @Test func pvhEntryIsProtectedModeWithoutPaging() {
        let registers = BootState.pvhEntry(gdtBase: 0x500)
        #expect(registers.cr0 == 0x11)
        #expect(registers.cr4 == 0 && registers.efer == 0)
        #expect(registers.cs.selector == 0x10 && registers.cs.db && !registers.cs.l)
        #expect(registers.ds.selector == 0x18)
        #expect(registers.gdt.limit == 39)
    }

    @Test func longModeEntryEnablesPagingAndLME() {
        let registers = BootState.longModeEntry(gdtBase: 0x500, pml4: 0x9000)
        #expect(registers.cr0 & 0x8000_0001 == 0x8000_0001)
        #expect(registers.cr3 == 0x9000)
        #expect(registers.efer == 0x500)
        #expect(registers.cs.l && !registers.cs.db)
    }

    @Test func identityPageTablesMapEveryTwoMiB() {
        let tables = IdentityPageTables(base: 0x9000, gigabytes: 4)
        let entries = tables.entries()
        #expect(entries.count == 6 * 512)
        #expect(entries[0] == 0xA003)
        #expect(entries[512] == 0xB003 && entries[515] == 0xE003)
        #expect(entries[1024] == 0x83)
        #expect(entries[1024 + 3 * 512 + 511] == (0xFFE0_0000 | 0x83))
    }
}

@Suite struct SoftwareVirtualizationPolicyTests {
    /// A host that reports every feature bit in the leaves the policy edits.
    let everything = [
        CPUIDEntry(function: 1, ecx: 0xFFFF_FFFF, edx: 0xFFFF_FFFF),
        CPUIDEntry(function: 7, index: 0, flags: 1, eax: 1, ebx: 0xFFFF_FFFF, ecx: 0xFFFF_FFFF, edx: 0xFFFF_FFFF),
        CPUIDEntry(function: 7, index: 1, flags: 1, eax: 0xFFFF_FFFF),
        CPUIDEntry(function: 0xD, index: 0, flags: 1, eax: 7),
        CPUIDEntry(function: 0x8000_0001, ecx: 0xFFFF_FFFF, edx: 0xFFFF_FFFF),
    ]

    func feature(_ name: String) throws -> CPUFeature {
        try #require(SoftwareVirtualization.withheldFeatures.first { $0.name == name })
    }

    @Test func softwareHostsSeeNoneOfTheWithheldFeatures() {
        let entries = CPUIDPolicy(supported: everything, vcpuCount: 1, softwareVirtualization: true).entries(forVCPU: 0)
        for feature in SoftwareVirtualization.withheldFeatures {
            #expect(!entries.contains { $0.reports(feature) }, "\(feature) still reported")
        }
        #expect(!entries.contains { $0.function == 0xD })
    }

    @Test(arguments: ["pni", "ssse3", "sse4_1", "sse4_2", "aes", "pclmulqdq", "sha_ni", "avx", "avx2", "avx512f", "vaes",
                      "vpclmulqdq", "gfni", "f16c", "fma", "popcnt", "bmi2", "cx16", "xsave"])
    func simdBeyondSSE2IsWithheld(name: String) throws {
        let withheld = try feature(name)
        let entries = CPUIDPolicy(supported: everything, vcpuCount: 1, softwareVirtualization: true).entries(forVCPU: 0)
        #expect(!entries.contains { $0.reports(withheld) })
    }

    @Test func keepsWhatTheEmulatorRuns() throws {
        let entries = CPUIDPolicy(supported: everything, vcpuCount: 1, softwareVirtualization: true).entries(forVCPU: 0)
        let kept = [
            CPUFeature("sse2", leaf: 1, .edx, bit: 26), CPUFeature("fxsr", leaf: 1, .edx, bit: 24),
            CPUFeature("x2apic", leaf: 1, .ecx, bit: 21), CPUFeature("tsc_deadline_timer", leaf: 1, .ecx, bit: 24),
            CPUFeature("rdrand", leaf: 1, .ecx, bit: 30), CPUFeature("fsgsbase", leaf: 7, .ebx, bit: 0),
            CPUFeature("smep", leaf: 7, .ebx, bit: 7), CPUFeature("erms", leaf: 7, .ebx, bit: 9),
            CPUFeature("rdseed", leaf: 7, .ebx, bit: 18), CPUFeature("lm", leaf: 0x8000_0001, .edx, bit: 29),
        ]
        for feature in kept {
            #expect(entries.contains { $0.reports(feature) }, "\(feature) withheld")
        }
    }

    @Test func hardwareHostsKeepEveryFeature() {
        let entries = CPUIDPolicy(supported: everything, vcpuCount: 1).entries(forVCPU: 0)
        for feature in SoftwareVirtualization.withheldFeatures {
            #expect(entries.contains { $0.reports(feature) }, "\(feature) withheld on a hardware host")
        }
        #expect(entries.contains { $0.function == 0xD })
    }

    @Test func linuxNumbersFollowTheCapabilityWords() throws {
        #expect(try feature("ssse3").linuxNumber == 4 * 32 + 9)
        #expect(try feature("popcnt").linuxNumber == 4 * 32 + 23)
        #expect(try feature("sha_ni").linuxNumber == 9 * 32 + 29)
        #expect(try feature("gfni").linuxNumber == 16 * 32 + 8)
        #expect(try feature("avx512_fp16").linuxNumber == 18 * 32 + 23)
        #expect(try feature("avx_vnni").linuxNumber == 12 * 32 + 4)
        #expect(try feature("sse4a").linuxNumber == 6 * 32 + 6)
        #expect(try feature("rdtscp").linuxNumber == 1 * 32 + 27)
        #expect(CPUFeature("sse2", leaf: 1, .edx, bit: 26).linuxNumber == 26)
        #expect(CPUFeature("xsaveopt", leaf: 0xD, subleaf: 1, .eax, bit: 0).linuxNumber == nil)
    }

    @Test func linuxParametersClearWhatLinuxDoesNotDropWithXSAVE() throws {
        let parameters = SoftwareVirtualization.linuxParameters
        // Linux hands bare words it does not know (noxsave) to init as arguments, which tern-init would run.
        #expect(parameters.allSatisfy { $0.contains("=") })
        let clear = try #require(parameters.first { $0.hasPrefix("clearcpuid=") })
        let value = clear.dropFirst("clearcpuid=".count)
        #expect(value.count <= 127, "Linux reads 127 characters of clearcpuid=")
        let numbers = Set(value.split(separator: ",").compactMap { Int($0) })
        for feature in SoftwareVirtualization.withheldFeatures {
            let number = try #require(feature.linuxNumber, "\(feature) has no Linux number")
            // Linux drops what needs XSAVE state itself once XSAVE is cleared; everything else must be named.
            #expect(numbers.contains(number) != feature.needsExtendedState, "\(feature)")
        }
        #expect(numbers.contains(4 * 32 + 26))  // xsave
        #expect(numbers.contains(4 * 32 + 9))  // ssse3: the blake2s code that stopped the stock kernel
    }
}

import ACPI
import Testing

@Suite struct MPTableTests {
    let base: UInt64 = 0x9_FC00

    @Test(arguments: [1, 2, 40])
    func floatingPointerAndConfigurationTableAreConsistent(vcpuCount: Int) {
        let table = MPTable.build(vcpuCount: vcpuCount, at: base)
        #expect(table.text(at: 0, count: 4) == "_MP_")
        #expect(table.integer(UInt32.self, at: 4) == UInt32(base) + 16)
        #expect(table[8] == 1 && table[9] == 4)
        #expect(table[0..<16].byteSum == 0)
        #expect(Array(table[11..<16]) == [0, 0, 0, 0, 0])

        let configuration = Array(table[16...])
        #expect(configuration.text(at: 0, count: 4) == "PCMP")
        #expect(Int(configuration.integer(UInt16.self, at: 4)) == configuration.count)
        #expect(configuration[6] == 4)
        #expect(configuration.byteSum == 0)
        #expect(configuration.integer(UInt16.self, at: 34) == UInt16(vcpuCount + 19))
        #expect(configuration.integer(UInt32.self, at: 36) == 0xFEE0_0000)
        #expect(configuration.count == 44 + 20 * vcpuCount + 8 * 19)
        #expect(table.count <= 1024)
    }

    @Test func entriesDescribeProcessorsBusIOAPICAndInterrupts() {
        let configuration = Array(MPTable.build(vcpuCount: 2, at: base)[16...])
        var offset = 44
        var processors: [[UInt8]] = []
        var others: [[UInt8]] = []
        while offset < configuration.count {
            let length = configuration[offset] == 0 ? 20 : 8
            let entry = Array(configuration[offset..<offset + length])
            if entry[0] == 0 { processors.append(entry) } else { others.append(entry) }
            offset += length
        }
        #expect(offset == configuration.count)
        #expect(processors.count == 2)
        #expect(Array(processors[0][0..<4]) == [0, 0, 0x14, 0x03])
        #expect(Array(processors[1][0..<4]) == [0, 1, 0x14, 0x01])
        #expect(processors[0].integer(UInt32.self, at: 4) == MPTable.defaultCPUSignature)
        #expect(processors[0].integer(UInt32.self, at: 8) == MPTable.defaultFeatureFlags)
        #expect(others[0] == [1, 0] + Array("ISA   ".utf8))
        #expect(others[1] == [2, 2, 0x11, 0x01, 0x00, 0x00, 0xC0, 0xFE])
        let interrupts = others.filter { $0[0] == 3 }
        #expect(interrupts.count == 15)
        #expect(interrupts.first == [3, 0, 0, 0, 0, 0, 2, 2], "IRQ 0 goes to pin 2")
        #expect(!interrupts.contains { $0[5] == 2 }, "IRQ 2 is the cascade")
        for entry in interrupts.dropFirst() { #expect(entry[7] == entry[5] && entry[6] == 2) }
        #expect(others.filter { $0[0] == 4 } == [[4, 3, 0, 0, 0, 0, 0xFF, 0], [4, 1, 0, 0, 0, 0, 0xFF, 1]])
    }

    @Test func customSignatureAndFeatures() {
        let table = MPTable.build(vcpuCount: 1, at: base, cpuSignature: 0x000806EA, featureFlags: 0x178BFBFF)
        #expect(table.integer(UInt32.self, at: 16 + 44 + 4) == 0x000806EA)
        #expect(table.integer(UInt32.self, at: 16 + 44 + 8) == 0x178BFBFF)
    }

    @Test(arguments: [41, 64, 255])
    func largeMachinesAreClampedToOneKiB(vcpuCount: Int) {
        let table = MPTable.build(vcpuCount: vcpuCount, at: base)
        #expect(table.count <= 1024)
        let configuration = Array(table[16...])
        #expect(configuration.integer(UInt16.self, at: 34) == UInt16(MPTable.maxProcessors + 19))
        #expect(configuration.byteSum == 0)
        // The I/O APIC id still follows every vCPU's APIC id.
        let ioAPIC = 44 + 20 * MPTable.maxProcessors + 8
        #expect(Array(configuration[ioAPIC..<ioAPIC + 2]) == [2, UInt8(vcpuCount)])
    }
}

import ACPI
import Testing

/// Decodes a PkgLength, returning the package length it states and the bytes it took.
private func decodePkgLength(_ bytes: [UInt8]) -> (length: Int, size: Int) {
    let extra = Int(bytes[0] >> 6)
    guard extra > 0 else { return (Int(bytes[0] & 0x3F), 1) }
    var length = Int(bytes[0] & 0x0F)
    for index in 0..<extra { length |= Int(bytes[1 + index]) << (4 + 8 * index) }
    return (length, 1 + extra)
}

@Suite struct AMLTests {
    @Test func nameSegmentsArePaddedWithUnderscores() {
        #expect(AML.nameSeg("_SB") == Array("_SB_".utf8))
        #expect(AML.nameSeg("COM1") == Array("COM1".utf8))
        #expect(AML.nameSeg("S5") == Array("S5__".utf8))
    }

    @Test func nameStringsCarryRootParentAndMultiSegmentPrefixes() {
        #expect(AML.nameString("COM1") == Array("COM1".utf8))
        #expect(AML.nameString("\\_SB_") == [0x5C] + Array("_SB_".utf8))
        #expect(AML.nameString("\\_SB_.PCI0") == [0x5C, 0x2E] + Array("_SB_PCI0".utf8))
        #expect(AML.nameString("^^PCI0") == [0x5E, 0x5E] + Array("PCI0".utf8))
        #expect(AML.nameString("\\_SB_.PCI0.S00") == [0x5C, 0x2F, 3] + Array("_SB_PCI0S00_".utf8))
        #expect(AML.nameString("\\") == [0x5C, 0x00])
    }

    @Test func integersUseTheShortestEncoding() {
        #expect(AML.integer(0) == [0x00])
        #expect(AML.integer(1) == [0x01])
        #expect(AML.integer(2) == [0x0A, 0x02])
        #expect(AML.integer(0xFF) == [0x0A, 0xFF])
        #expect(AML.integer(0x100) == [0x0B, 0x00, 0x01])
        #expect(AML.integer(0xFFFF) == [0x0B, 0xFF, 0xFF])
        #expect(AML.integer(0x1_0000) == [0x0C, 0x00, 0x00, 0x01, 0x00])
        #expect(AML.integer(0xFFFF_FFFF) == [0x0C, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(AML.integer(0x1_0000_0000) == [0x0E, 0, 0, 0, 0, 1, 0, 0, 0])
    }

    @Test func stringsAreNullTerminated() {
        #expect(AML.string("LNRO0005") == [0x0D] + Array("LNRO0005".utf8) + [0x00])
    }

    @Test(arguments: [
        (0, [0x01]),
        (62, [0x3F]),  // 63 bytes in all: the largest one-byte encoding
        (63, [0x41, 0x04]),  // 64 would need the length byte too: 65 in two bytes
        (4093, [0x4F, 0xFF]),  // 4095 in all: the largest two-byte encoding
        (4094, [0x81, 0x00, 0x01]),  // 4097 in three bytes
        (0xF_FFFC, [0x8F, 0xFF, 0xFF]),  // 0xFFFFF: the largest three-byte encoding
        (0xF_FFFD, [0xC1, 0x00, 0x00, 0x01]),  // 0x100001 in four bytes
    ] as [(Int, [UInt8])])
    func pkgLengthBoundaries(contentLength: Int, expected: [UInt8]) {
        #expect(AML.pkgLength(contentLength: contentLength) == expected)
    }

    @Test func pkgLengthAlwaysCountsItself() {
        for contentLength in [0, 1, 61, 62, 63, 64, 65, 4092, 4093, 4094, 4095, 4096, 0xF_FFFB, 0xF_FFFC, 0xF_FFFD, 0xF_FFFE] {
            let encoded = AML.pkgLength(contentLength: contentLength)
            let decoded = decodePkgLength(encoded)
            #expect(decoded.size == encoded.count)
            #expect(decoded.length == contentLength + encoded.count, "content \(contentLength)")
            #expect(encoded[0] & 0x30 == 0 || encoded.count == 1, "reserved bits must be clear")
        }
    }

    @Test func packagesAroundTheOneByteBoundaryEncodeTheirWholeLength() {
        // 60 one-byte elements: 1 count byte + 60 = 61 bytes of contents, PkgLength 62 fits one byte.
        let small = AML.package(Array(repeating: AML.integer(1), count: 60))
        #expect(small[0] == 0x12 && small[1] == 62 && small.count == 63)
        // 62 elements push the total to 65, which needs a two-byte PkgLength.
        let large = AML.package(Array(repeating: AML.integer(1), count: 62))
        #expect(Array(large[1...2]) == [0x41, 0x04] && large.count == 66)
    }

    @Test func scopeDeviceNameAndMethod() {
        let name = AML.name("_UID", AML.integer(1))
        #expect(name == [0x08] + Array("_UID".utf8) + [0x01])
        let device = AML.device("COM1", [name])
        #expect(device == [0x5B, 0x82, 11] + Array("COM1".utf8) + name)
        let scope = AML.scope("\\_SB_", [device])
        #expect(scope == [0x10, UInt8(1 + 5 + device.count)] + [0x5C] + Array("_SB_".utf8) + device)
        let method = AML.method("_STA", [AML.return(AML.integer(0x0F))])
        #expect(method == [0x14, 9] + Array("_STA".utf8) + [0x00, 0xA4, 0x0A, 0x0F])
        let serialized = AML.method("FOO", argumentCount: 3, serialized: true, [])
        #expect(serialized == [0x14, 6] + Array("FOO_".utf8) + [0x0B])
    }

    @Test func buffersAndPackages() {
        #expect(AML.buffer([1, 2, 3]) == [0x11, 6, 0x0A, 3, 1, 2, 3])
        #expect(AML.buffer([]) == [0x11, 2, 0x00])
        #expect(AML.package([AML.integer(1), AML.integer(2)]) == [0x12, 5, 2, 0x01, 0x0A, 0x02])
    }

    @Test func eisaIDsCompress() {
        #expect(AML.eisaIDValue("PNP0501") == 0x0105_D041)
        #expect(AML.eisaIDValue("PNP0303") == 0x0303_D041)
        #expect(AML.eisaIDValue("PNP0A08") == 0x080A_D041)
        #expect(AML.eisaID("PNP0501") == [0x0C, 0x41, 0xD0, 0x05, 0x01])
    }

    @Test func smallResourceDescriptors() {
        #expect(ResourceDescriptor.io(base: 0x3F8, length: 8).bytes == [0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08])
        #expect(ResourceDescriptor.irqNoFlags([4]).bytes == [0x22, 0x10, 0x00])
        #expect(ResourceDescriptor.irqNoFlags([1, 12]).bytes == [0x22, 0x02, 0x10])
    }

    @Test func largeResourceDescriptors() {
        #expect(
            ResourceDescriptor.memory32Fixed(base: 0xD000_0000, length: 0x200).bytes
                == [0x86, 9, 0, 1, 0x00, 0x00, 0x00, 0xD0, 0x00, 0x02, 0x00, 0x00])
        #expect(
            ResourceDescriptor.extendedInterrupt([16], trigger: .level, polarity: .activeHigh).bytes
                == [0x89, 6, 0, 0x01, 1, 16, 0, 0, 0])
        #expect(
            ResourceDescriptor.extendedInterrupt([5, 6], trigger: .edge, polarity: .activeLow, shared: true).bytes
                == [0x89, 10, 0, 0x0F, 2, 5, 0, 0, 0, 6, 0, 0, 0])
        let bus = ResourceDescriptor.wordBusNumber(0...0xFF).bytes
        #expect(bus == [0x88, 13, 0, 2, 0x0C, 0, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0x00, 0x01])
        let io = ResourceDescriptor.wordIO(0x0D00...0xFFFF).bytes
        #expect(io == [0x88, 13, 0, 1, 0x0C, 3, 0, 0, 0x00, 0x0D, 0xFF, 0xFF, 0, 0, 0x00, 0xF3])
        let memory = ResourceDescriptor.dwordMemory(0xC000_0000...0xFEBF_FFFF).bytes
        #expect(memory.count == 26 && Array(memory[0...5]) == [0x87, 23, 0, 0, 0x0C, 0x01])
        #expect(memory.integer(UInt32.self, at: 10) == 0xC000_0000)
        #expect(memory.integer(UInt32.self, at: 14) == 0xFEBF_FFFF)
        #expect(memory.integer(UInt32.self, at: 22) == 0x3EC0_0000)
        let memory64 = ResourceDescriptor.qwordMemory(0x80_0000_0000...0xFF_FFFF_FFFF, cacheability: .prefetchable).bytes
        #expect(memory64.count == 46 && Array(memory64[0...5]) == [0x8A, 43, 0, 0, 0x0C, 0x07])
        #expect(memory64.integer(UInt64.self, at: 14) == 0x80_0000_0000)
        #expect(memory64.integer(UInt64.self, at: 38) == 0x80_0000_0000)
    }

    @Test func resourceTemplatesEndWithAZeroChecksumEndTag() {
        let template = AML.resourceTemplate([.io(base: 0x60, length: 1), .irqNoFlags([1])])
        #expect(template == [0x11, 16, 0x0A, 13, 0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01, 0x22, 0x02, 0x00, 0x79, 0x00])
    }
}

import BootLoader
import Decompression
import Glibc
import GuestMemory
import TestSupport
import Testing

/// Builds a minimal bzImage: one setup sector, a setup header, protected-mode code and a compressed payload.
struct BzImageBuilder {
    var version: UInt16 = 0x020F
    var xloadFlags: UInt16 = 0x7F
    var initSize: UInt32 = 0x20_0000
    var payload: [UInt8] = xzCompress(ELFBuilder().build())
    var payloadSizeWord: UInt32 = UInt32(ELFBuilder().build().count)

    func build() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 1024)
        func put16(_ offset: Int, _ value: UInt16) { withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } } }
        func put32(_ offset: Int, _ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } } }
        func put64(_ offset: Int, _ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } } }
        bytes[0x1F1] = 1  // setup sectors
        put16(0x1FE, 0xAA55)
        bytes[0x200] = 0xEB
        bytes[0x201] = 0x66  // header ends at 0x268
        put32(0x202, SetupHeader.magic)
        put16(0x206, version)
        bytes[0x211] = 0x01
        put32(0x22C, 0x7FFF_FFFF)
        put32(0x230, 0x20_0000)
        bytes[0x234] = 1
        put16(0x236, xloadFlags)
        put32(0x238, 2047)
        let code = [UInt8](repeating: 0x90, count: 0x100)
        put32(0x248, UInt32(code.count))
        put32(0x24C, UInt32(payload.count + 4))
        put64(0x258, 0x100_0000)
        put32(0x260, initSize)
        var sizeWord: [UInt8] = []
        sizeWord.append(le32: payloadSizeWord)
        return bytes + code + payload + sizeWord
    }
}

@Suite struct BzImageTests {
    func header(_ bytes: [UInt8]) throws(ImageFormatError) -> SetupHeader {
        let result: Result<SetupHeader, ImageFormatError> = bytes.withUnsafeBytes { buffer in
            Result { () throws(ImageFormatError) in try SetupHeader(parsing: buffer) }
        }
        return try result.get()
    }

    @Test func parsesTheSetupHeader() throws {
        let parsed = try header(BzImageBuilder().build())
        #expect(parsed.version == 0x020F)
        #expect(parsed.setupSectors == 1)
        #expect(parsed.protectedModeOffset == 1024)
        #expect(parsed.commandLineSize == 2047)
        #expect(parsed.initrdAddressMax == 0x7FFF_FFFF)
        #expect(parsed.payloadOffset == 0x100)
        #expect(parsed.end == 0x268)
        #expect(parsed.relocatable)
    }

    @Test func refusesWhatThe64BitProtocolRulesOut() {
        var old = BzImageBuilder()
        old.version = 0x0206
        #expect(throws: ImageFormatError.bootProtocolTooOld(version: 0x0206)) { try header(old.build()) }
        var noEntry = BzImageBuilder()
        noEntry.xloadFlags = 0
        #expect(throws: ImageFormatError.no64BitEntry) { try header(noEntry.build()) }
        #expect(throws: ImageFormatError.bzImageTruncated) { try header(Array(BzImageBuilder().build().prefix(1100))) }
    }

    @Test func signatureWithoutRoomForTheVersionIsNotABzImage() {
        // Found by fuzz/run-kernel-image.sh: a file ending between the "HdrS" signature and the version field.
        let bytes = Array(BzImageBuilder().build().prefix(0x207))
        #expect(!bytes.withUnsafeBytes { SetupHeader.matches($0) })
        #expect(throws: ImageFormatError.badMagic) { try header(bytes) }
        #expect(bytes.withUnsafeBytes { SetupHeader.kernelRelease($0) } == nil)
    }

    @Test func bootsTheBzImageThroughTheZeroPage() throws {
        let memory = try GuestMemory(size: 64 << 20)
        let kernel = temporaryFile(BzImageBuilder().build(), name: "bzimage")
        let initrd = temporaryFile([1, 2, 3, 4], name: "initrd")
        defer { unlink(kernel); unlink(initrd) }
        let plan = try KernelLoader.load(kernelPath: kernel, initrdPath: initrd, commandLine: "console=ttyS0", into: memory,
                                         rsdpAddress: 0xE0000, decompression: .guest)
        #expect(plan.bootProtocol == .bzImage)
        #expect(plan.hostDecompressed == nil)
        #expect(plan.registers.rip == 0x10_0200)
        #expect(plan.registers.rsi == BootLayout.zeroPage)
        #expect(plan.systemRegisters.efer & 0x400 != 0)
        let page = BootLayout.zeroPage
        #expect(try memory.load(UInt32.self, at: page + 0x202) == SetupHeader.magic)
        #expect(try memory.load(UInt8.self, at: page + 0x210) == 0xFF)
        #expect(try memory.load(UInt8.self, at: page + 0x211) & 0x81 == 0x81)
        #expect(try memory.load(UInt32.self, at: page + 0x228) == UInt32(BootLayout.commandLine))
        #expect(try memory.load(UInt32.self, at: page + 0x218) == UInt32(plan.initrd!.address))
        #expect(try memory.load(UInt32.self, at: page + 0x21C) == 4)
        #expect(try memory.load(UInt64.self, at: page + 0x070) == 0xE0000)
        #expect(try memory.load(UInt8.self, at: page + 0x1E8) == UInt8(plan.memoryMap.count))
        #expect(try memory.load(UInt64.self, at: page + 0x2D0 + 20 + 8) == 0x10_0000 - 0x9_FC00)
        #expect(try memory.load(UInt32.self, at: page + 0x2D0 + 20 + 16) == 2)
        #expect(try memory.bytes(at: 0x10_0000, count: 2) == [0x90, 0x90])
        #expect(plan.initrd!.address >= 0x10_0000 + 0x20_0000)
    }

    @Test func hostDecompressionBootsTheELFInsideThroughPVH() throws {
        let memory = try GuestMemory(size: 64 << 20)
        let kernel = temporaryFile(BzImageBuilder().build(), name: "bzimage-host")
        defer { unlink(kernel) }
        let plan = try KernelLoader.load(kernelPath: kernel, initrdPath: nil, commandLine: "", into: memory)
        #expect(plan.bootProtocol == .pvh)
        #expect(plan.hostDecompressed == .xz)
        #expect(plan.registers.rip == 0x10_0000)
        #expect(try memory.bytes(at: 0x10_0000, count: 3) == [0x90, 0x90, 0xF4])
    }

    @Test func payloadWithoutPVHNoteFallsBackToTheBzImageProtocol() throws {
        var builder = BzImageBuilder()
        var plain = ELFBuilder()
        plain.note = nil
        builder.payload = gzipCompress(plain.build())
        let memory = try GuestMemory(size: 64 << 20)
        let kernel = temporaryFile(builder.build(), name: "bzimage-plain")
        defer { unlink(kernel) }
        let plan = try KernelLoader.load(kernelPath: kernel, initrdPath: nil, commandLine: "", into: memory)
        #expect(plan.bootProtocol == .bzImage)
    }

    @Test func corruptPayloadIsAClearError() throws {
        var builder = BzImageBuilder()
        builder.payload = [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00] + [UInt8](repeating: 0x11, count: 64)
        let memory = try GuestMemory(size: 64 << 20)
        let kernel = temporaryFile(builder.build(), name: "bzimage-corrupt")
        defer { unlink(kernel) }
        #expect(throws: BootError.self) { try KernelLoader.load(kernelPath: kernel, initrdPath: nil, commandLine: "", into: memory) }
    }

    @Test func kernelNeedingMoreThanRAMIsRefused() throws {
        var builder = BzImageBuilder()
        builder.initSize = 64 << 20
        let memory = try GuestMemory(size: 32 << 20)
        let kernel = temporaryFile(builder.build(), name: "bzimage-big")
        defer { unlink(kernel) }
        #expect(throws: BootError.self) {
            try KernelLoader.load(kernelPath: kernel, initrdPath: nil, commandLine: "", into: memory, decompression: .guest)
        }
    }

    @Test func commandLineLongerThanTheKernelAcceptsIsRefused() throws {
        let memory = try GuestMemory(size: 64 << 20)
        let kernel = temporaryFile(BzImageBuilder().build(), name: "bzimage-cmdline")
        defer { unlink(kernel) }
        #expect(throws: BootError.self) {
            try KernelLoader.load(kernelPath: kernel, initrdPath: nil, commandLine: String(repeating: "a", count: 3000),
                                  into: memory, decompression: .guest)
        }
    }
}

import BootLoader
import Glibc
import GuestMemory
import TestSupport
import Testing
import X86

@Suite struct KernelLoaderTests {
    @Test func pvhKernelGetsStartInfoCommandLineAndMemoryMap() throws {
        let memory = try GuestMemory(size: 16 << 20)
        let kernel = temporaryFile(ELFBuilder().build(), name: "kernel")
        let initrd = temporaryFile([UInt8](repeating: 0x5A, count: 10000), name: "initrd")
        defer { unlink(kernel); unlink(initrd) }
        let plan = try KernelLoader.load(kernelPath: kernel, initrdPath: initrd, commandLine: "console=ttyS0", into: memory)
        #expect(plan.bootProtocol == .pvh)
        #expect(plan.registers.rip == 0x10_0000)
        #expect(plan.registers.rbx == BootLayout.startInfo)
        #expect(plan.systemRegisters.cr0 & 1 == 1)
        #expect(try memory.bytes(at: 0x10_0000, count: 4) == [0x90, 0x90, 0xF4, 0])
        #expect(try memory.load(UInt32.self, at: BootLayout.startInfo) == KernelLoader.startInfoMagic)
        #expect(try memory.load(UInt32.self, at: BootLayout.startInfo + 4) == 1)
        #expect(try memory.load(UInt32.self, at: BootLayout.startInfo + 12) == 1)
        let commandLine = try memory.load(UInt64.self, at: BootLayout.startInfo + 24)
        #expect(try memory.bytes(at: commandLine, count: 14) == Array("console=ttyS0\0".utf8))
        #expect(try memory.load(UInt32.self, at: BootLayout.startInfo + 48) == UInt32(plan.memoryMap.count))
        let initrdAddress = try memory.load(UInt64.self, at: BootLayout.moduleList)
        #expect(initrdAddress == plan.initrd?.address)
        #expect(initrdAddress % 4096 == 0 && initrdAddress + 10000 <= 16 << 20)
        #expect(try memory.load(UInt64.self, at: BootLayout.moduleList + 8) == 10000)
        #expect(try memory.bytes(at: initrdAddress, count: 2) == [0x5A, 0x5A])
        let gdt = try memory.load(UInt64.self, at: BootLayout.gdt + 16)
        #expect(gdt == BootState.bootGDT(longMode: false)[2])
    }

    @Test func bssIsClearedUnlessMemoryIsKnownZero() throws {
        let memory = try GuestMemory(size: 16 << 20)
        try memory.write([UInt8](repeating: 0xEE, count: 16), at: 0x10_0000)
        let kernel = temporaryFile(ELFBuilder().build(), name: "bss")
        defer { unlink(kernel) }
        _ = try KernelLoader.load(kernelPath: kernel, initrdPath: nil, commandLine: "", into: memory, memoryIsZeroed: true)
        #expect(try memory.bytes(at: 0x10_0003, count: 2) == [0xEE, 0xEE])
        _ = try KernelLoader.load(kernelPath: kernel, initrdPath: nil, commandLine: "", into: memory)
        #expect(try memory.bytes(at: 0x10_0003, count: 13) == [UInt8](repeating: 0, count: 13))
    }

    @Test func plainELFEntersLongModeWithPageTables() throws {
        let memory = try GuestMemory(size: 16 << 20)
        var builder = ELFBuilder()
        builder.note = nil
        builder.entry = 0x10_0001
        let kernel = temporaryFile(builder.build(), name: "plain")
        defer { unlink(kernel) }
        let plan = try KernelLoader.load(kernelPath: kernel, initrdPath: nil, commandLine: "", into: memory)
        #expect(plan.bootProtocol == .elf64)
        #expect(plan.registers.rip == 0x10_0001)
        #expect(plan.systemRegisters.cr3 == BootLayout.pageTables)
        #expect(try memory.load(UInt64.self, at: BootLayout.pageTables) == (BootLayout.pageTables + 0x1000) | 3)
    }

    func loadError(_ kernel: [UInt8], memory: UInt64 = 16 << 20, initrd: [UInt8]? = nil, commandLine: String = "") throws -> String {
        let memory = try GuestMemory(size: memory)
        let path = temporaryFile(kernel, name: "bad")
        let initrdPath = initrd.map { temporaryFile($0, name: "initrd") }
        defer { unlink(path); if let initrdPath { unlink(initrdPath) } }
        do {
            _ = try KernelLoader.load(kernelPath: path, initrdPath: initrdPath, commandLine: commandLine, into: memory)
            return ""
        } catch {
            return error.description
        }
    }

    @Test func segmentOutsideRAMIsRefused() throws {
        var builder = ELFBuilder()
        builder.segments = [(0x10_0000, [1], 64 << 20)]
        let message = try loadError(builder.build())
        #expect(message.contains("outside guest RAM"))
        #expect(message.contains("--memory"))
    }

    @Test func segmentBelowOneMiBIsRefused() throws {
        var builder = ELFBuilder()
        builder.segments = [(0x7000, [1], 0x1000)]
        #expect(try loadError(builder.build()).contains("below 1 MiB"))
    }

    @Test func garbageAndMissingFilesNameTheFile() throws {
        #expect(try loadError(Array("hello world, not a kernel at all".utf8) + [UInt8](repeating: 0, count: 64)).contains("neither an ELF64 image nor a bzImage"))
        let memory = try GuestMemory(size: 4 << 20)
        #expect(throws: BootError(path: "/nonexistent/kernel", reason: "No such file or directory")) {
            try KernelLoader.load(kernelPath: "/nonexistent/kernel", initrdPath: nil, commandLine: "", into: memory)
        }
        #expect(throws: BootError(path: "/tmp", reason: "not a regular file")) {
            try KernelLoader.load(kernelPath: "/tmp", initrdPath: nil, commandLine: "", into: memory)
        }
    }

    @Test func initrdTooLargeIsRefused() throws {
        let message = try loadError(ELFBuilder().build(), memory: 4 << 20, initrd: [UInt8](repeating: 1, count: 4 << 20))
        #expect(message.contains("does not fit"))
    }

    @Test func overlongCommandLineIsRefused() throws {
        #expect(try loadError(ELFBuilder().build(), commandLine: String(repeating: "x", count: 5000)).contains("shorten --cmdline"))
    }
}

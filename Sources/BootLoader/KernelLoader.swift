import GuestMemory
import X86

/// What the loader placed in guest memory and how the boot vCPU must start.
public struct BootPlan: Sendable {
    public enum BootProtocol: Equatable, Sendable {
        /// 32-bit protected-mode entry with %ebx pointing at `hvm_start_info`.
        case pvh
        /// 64-bit entry at the ELF entry point with identity paging.
        case elf64
    }

    public let bootProtocol: BootProtocol
    public let registers: GeneralRegisters
    public let systemRegisters: SystemRegisters
    /// One past the highest byte the kernel occupies.
    public let kernelEnd: UInt64
    /// Where the initrd was placed, if there is one.
    public let initrd: (address: UInt64, size: UInt64)?
    /// The memory map given to the guest.
    public let memoryMap: [MemoryMapEntry]
}

/// Places ELF64 kernels (PVH or plain), an optional initrd and the command line in guest memory.
public enum KernelLoader {
    /// The PVH start-info magic (`XEN_HVM_START_MAGIC_VALUE`).
    public static let startInfoMagic: UInt32 = 0x336E_C578
    /// Highest address an initrd may end at: the start of the 32-bit MMIO hole.
    public static let initrdLimit: UInt64 = MemoryLayout32.mmioHoleStart

    /// Loads `kernelPath` (and `initrdPath`) into `memory`. Errors name the offending file and the fix.
    ///
    /// - Parameter memoryIsZeroed: the memory is known to be all zeroes (freshly created), so the bytes a segment
    ///   has in memory beyond its file contents (BSS) need no clearing; leaving them untouched keeps them off the host.
    public static func load(kernelPath: String, initrdPath: String?, commandLine: String,
                            into memory: GuestMemory, memoryIsZeroed: Bool = false) throws(BootError) -> BootPlan {
        let kernel = try MappedFile(path: kernelPath)
        let image: ELFImage
        do {
            image = try ELFImage(parsing: kernel.bytes)
        } catch {
            throw BootError(path: kernelPath, reason: error.description)
        }
        var kernelEnd: UInt64 = 0
        for (index, segment) in image.segments.enumerated() {
            guard segment.physicalAddress >= BootLayout.highMemory else {
                throw BootError(path: kernelPath, reason: "segment \(index) at 0x\(hex(segment.physicalAddress)) is below 1 MiB, where Tern keeps boot data; link the kernel at 1 MiB or above")
            }
            do {
                let destination = try memory.pointer(at: segment.physicalAddress, length: segment.memorySize)
                destination.copyMemory(from: kernel.bytes.baseAddress!.advanced(by: Int(segment.fileOffset)), byteCount: Int(segment.fileSize))
                if !memoryIsZeroed {
                    destination.advanced(by: Int(segment.fileSize)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(segment.memorySize - segment.fileSize))
                }
            } catch {
                throw BootError(path: kernelPath, reason: "segment \(index) (0x\(hex(segment.physicalAddress))+0x\(hex(segment.memorySize))) lies outside guest RAM of \(memory.size >> 20) MiB; give the guest more memory with --memory")
            }
            kernelEnd = max(kernelEnd, segment.physicalAddress + segment.memorySize)
        }

        let commandBytes = Array(commandLine.utf8)
        guard commandBytes.count < BootLayout.commandLineCapacity else {
            throw BootError(path: "command line", reason: "\(commandBytes.count) bytes is longer than the \(BootLayout.commandLineCapacity - 1) Tern passes; shorten --cmdline")
        }
        guard !commandBytes.contains(0) else { throw BootError(path: "command line", reason: "contains a NUL byte") }
        try writeBootData(memory) { () throws(GuestMemoryError) in
            try memory.write(commandBytes + [0], at: BootLayout.commandLine)
        }

        var initrd: (address: UInt64, size: UInt64)?
        if let initrdPath {
            initrd = try placeInitrd(path: initrdPath, above: kernelEnd, in: memory)
        }

        let memoryMap = MemoryMapEntry.map(for: memory)
        try writeStartInfo(memory: memory, memoryMap: memoryMap, initrd: initrd)

        var registers = GeneralRegisters()
        let systemRegisters: SystemRegisters
        let bootProtocol: BootPlan.BootProtocol
        if let pvhEntry = image.pvhEntry {
            guard pvhEntry < 0x1_0000_0000, memory.contains(pvhEntry, length: 1) else {
                throw BootError(path: kernelPath, reason: "PVH entry point 0x\(hex(pvhEntry)) is not in guest RAM below 4 GiB")
            }
            bootProtocol = .pvh
            registers.rip = pvhEntry
            registers.rbx = BootLayout.startInfo
            systemRegisters = BootState.pvhEntry(gdtBase: BootLayout.gdt)
            try writeTable(BootState.bootGDT(longMode: false), at: BootLayout.gdt, memory: memory)
        } else {
            guard memory.contains(image.entry, length: 1) else {
                throw BootError(path: kernelPath, reason: "entry point 0x\(hex(image.entry)) is not in guest RAM")
            }
            bootProtocol = .elf64
            let tables = IdentityPageTables(base: BootLayout.pageTables, gigabytes: 4)
            try writeTable(tables.entries(), at: tables.base, memory: memory)
            try writeTable(BootState.bootGDT(longMode: true), at: BootLayout.gdt, memory: memory)
            registers.rip = image.entry
            registers.rsp = BootLayout.bootStack
            registers.rbp = BootLayout.bootStack
            registers.rbx = BootLayout.startInfo
            registers.rdi = BootLayout.startInfo
            systemRegisters = BootState.longModeEntry(gdtBase: BootLayout.gdt, pml4: tables.base)
        }
        return BootPlan(bootProtocol: bootProtocol, registers: registers, systemRegisters: systemRegisters,
                        kernelEnd: kernelEnd, initrd: initrd, memoryMap: memoryMap)
    }

    /// Puts the initrd as high as possible in low RAM, page aligned, above the kernel.
    static func placeInitrd(path: String, above kernelEnd: UInt64, in memory: GuestMemory) throws(BootError) -> (address: UInt64, size: UInt64) {
        let file = try MappedFile(path: path)
        let size = UInt64(file.bytes.count)
        let lowRAMEnd = min(memory.regions[0].end, initrdLimit)
        let floor = (kernelEnd + 0xFFF) & ~0xFFF
        guard lowRAMEnd > floor, lowRAMEnd - floor >= size else {
            throw BootError(path: path, reason: "the initrd (\(size >> 10) KiB) does not fit in guest RAM above the kernel; raise --memory")
        }
        let address = (lowRAMEnd - size) & ~0xFFF
        try writeBootData(memory) { () throws(GuestMemoryError) in try memory.write(file.bytes, at: address) }
        return (address, size)
    }

    /// Writes `hvm_start_info` (version 1), its module list and memory map.
    static func writeStartInfo(memory: GuestMemory, memoryMap: [MemoryMapEntry], initrd: (address: UInt64, size: UInt64)?) throws(BootError) {
        precondition(memoryMap.count <= BootLayout.maximumMemoryMapEntries)
        try writeBootData(memory) { () throws(GuestMemoryError) in
            let base = BootLayout.startInfo
            try memory.zero(at: base, length: 0x100)
            try memory.store(startInfoMagic, at: base)
            try memory.store(UInt32(1), at: base + 4)  // version
            try memory.store(UInt32(0), at: base + 8)  // flags
            try memory.store(UInt32(initrd == nil ? 0 : 1), at: base + 12)
            try memory.store(initrd == nil ? UInt64(0) : BootLayout.moduleList, at: base + 16)
            try memory.store(BootLayout.commandLine, at: base + 24)
            try memory.store(UInt64(0), at: base + 32)  // no RSDP
            try memory.store(BootLayout.memoryMap, at: base + 40)
            try memory.store(UInt32(memoryMap.count), at: base + 48)
            if let initrd {
                try memory.store(initrd.address, at: BootLayout.moduleList)
                try memory.store(initrd.size, at: BootLayout.moduleList + 8)
            }
            for (index, entry) in memoryMap.enumerated() {
                let slot = BootLayout.memoryMap + UInt64(index) * 24
                try memory.store(entry.address, at: slot)
                try memory.store(entry.size, at: slot + 8)
                try memory.store(entry.kind.rawValue, at: slot + 16)
                try memory.store(UInt32(0), at: slot + 20)
            }
        }
    }

    static func writeTable(_ entries: [UInt64], at address: UInt64, memory: GuestMemory) throws(BootError) {
        try writeBootData(memory) { () throws(GuestMemoryError) in
            for (index, entry) in entries.enumerated() {
                try memory.store(entry, at: address + UInt64(index) * 8)
            }
        }
    }

    /// Runs a write of boot data; a failure means guest RAM is too small for the boot layout.
    static func writeBootData(_ memory: GuestMemory, _ body: () throws(GuestMemoryError) -> Void) throws(BootError) {
        do {
            try body()
        } catch {
            throw BootError(path: "guest memory", reason: "\(error); give the guest more memory with --memory")
        }
    }
}

func hex(_ value: UInt64) -> String { String(value, radix: 16) }

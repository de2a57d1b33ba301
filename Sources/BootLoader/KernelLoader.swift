import Decompression
import GuestMemory
import X86

/// What the loader placed in guest memory and how the boot vCPU must start.
public struct BootPlan: Sendable {
    public enum BootProtocol: Equatable, Sendable {
        /// 32-bit protected-mode entry with %ebx pointing at `hvm_start_info`.
        case pvh
        /// 64-bit entry at the ELF entry point with identity paging.
        case elf64
        /// The Linux 64-bit boot protocol: entry at the bzImage's 64-bit entry with %rsi pointing at the zero page.
        case bzImage
    }

    public let bootProtocol: BootProtocol
    /// The compression Tern undid on the host before booting the kernel inside a bzImage, if it did.
    public var hostDecompressed: CompressionFormat?
    public let registers: GeneralRegisters
    public let systemRegisters: SystemRegisters
    /// One past the highest byte the kernel occupies.
    public let kernelEnd: UInt64
    /// Where the initrd was placed, if there is one.
    public let initrd: (address: UInt64, size: UInt64)?
    /// The memory map given to the guest.
    public let memoryMap: [MemoryMapEntry]
}

/// Where a bzImage's compressed kernel is unpacked.
public enum KernelDecompression: String, Equatable, Sendable, Codable {
    /// By Tern, before boot; the ELF inside boots through PVH when it can.
    case host
    /// By the kernel's own decompressor, in the guest.
    case guest
}

/// Places ELF64 kernels (PVH or plain), an optional initrd and the command line in guest memory.
public enum KernelLoader {
    /// The PVH start-info magic (`XEN_HVM_START_MAGIC_VALUE`).
    public static let startInfoMagic: UInt32 = 0x336E_C578
    /// Highest address an initrd may end at: the start of the 32-bit MMIO hole.
    public static let initrdLimit: UInt64 = MemoryLayout32.mmioHoleStart

    /// Loads `kernelPath` (and `initrdPath`) into `memory`, detecting ELF and bzImage kernels from their contents.
    /// Errors name the offending file and the fix.
    ///
    /// - Parameters:
    ///   - memoryIsZeroed: the memory is known to be all zeroes (freshly created), so the bytes a segment has in memory
    ///     beyond its file contents (BSS) need no clearing; leaving them untouched keeps them off the host.
    ///   - rsdpAddress: where the ACPI RSDP is, passed to the kernel through the boot protocol.
    ///   - decompression: for a bzImage, `.host` decompresses its payload here and boots the ELF inside through PVH
    ///     when it carries the PVH note (skipping the guest's own decompressor); otherwise the bzImage boots as is.
    public static func load(kernelPath: String, initrdPath: String?, commandLine: String, into memory: GuestMemory,
                            memoryIsZeroed: Bool = false, rsdpAddress: UInt64? = nil,
                            decompression: KernelDecompression = .host) throws(BootError) -> BootPlan {
        let kernel = try MappedFile(path: kernelPath)
        if SetupHeader.matches(kernel.bytes) {
            let header: SetupHeader
            do {
                header = try SetupHeader(parsing: kernel.bytes)
            } catch {
                throw BootError(path: kernelPath, reason: error.description)
            }
            if decompression == .host, let payload = try decompressedPayload(kernel.bytes, header: header, path: kernelPath) {
                let result: Result<BootPlan?, BootError> = payload.vmlinux.withUnsafeBytes { bytes in
                    guard let image = try? ELFImage(parsing: bytes), image.pvhEntry != nil else { return .success(nil) }
                    return Result { () throws(BootError) in
                        try loadELF(bytes, path: kernelPath, image: image, initrdPath: initrdPath, commandLine: commandLine,
                                    memory: memory, memoryIsZeroed: memoryIsZeroed, rsdpAddress: rsdpAddress)
                    }
                }
                if var plan = try result.get() {
                    plan.hostDecompressed = payload.format
                    return plan
                }
            }
            return try loadBzImage(kernel, header: header, initrdPath: initrdPath, commandLine: commandLine,
                                   memory: memory, rsdpAddress: rsdpAddress)
        }
        let image: ELFImage
        do {
            image = try ELFImage(parsing: kernel.bytes)
        } catch {
            throw BootError(path: kernelPath, reason: error.description)
        }
        return try loadELF(kernel.bytes, path: kernelPath, image: image, initrdPath: initrdPath, commandLine: commandLine,
                           memory: memory, memoryIsZeroed: memoryIsZeroed, rsdpAddress: rsdpAddress)
    }

    /// Largest kernel Tern decompresses on the host.
    static let decompressedLimit = 1 << 30

    /// The ELF kernel inside a bzImage, decompressed here; nil when its compression is one Tern does not handle.
    static func decompressedPayload(_ bytes: UnsafeRawBufferPointer, header: SetupHeader,
                                    path: String) throws(BootError) -> (vmlinux: [UInt8], format: CompressionFormat)? {
        let start = header.protectedModeOffset + Int(header.payloadOffset)
        let payload = UnsafeRawBufferPointer(rebasing: bytes[start..<start + Int(header.payloadLength)])
        guard payload.count >= 8, let format = CompressionFormat.detect(payload) else { return nil }
        // The kernel build appends the decompressed size as the payload's last four bytes.
        let sizeHint = Int(UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: payload.count - 4, as: UInt32.self)))
        do {
            let vmlinux = try Decompressor.decompress(payload, format: format, sizeHint: min(sizeHint, decompressedLimit),
                                                      limit: decompressedLimit)
            return (vmlinux, format)
        } catch {
            throw BootError(path: path, reason: "the bzImage's \(error); boot it with in-guest decompression instead")
        }
    }

    static func loadELF(_ bytes: UnsafeRawBufferPointer, path kernelPath: String, image: ELFImage, initrdPath: String?, commandLine: String,
                        memory: GuestMemory, memoryIsZeroed: Bool, rsdpAddress: UInt64?) throws(BootError) -> BootPlan {
        var kernelEnd: UInt64 = 0
        for (index, segment) in image.segments.enumerated() {
            guard segment.physicalAddress >= BootLayout.highMemory else {
                throw BootError(path: kernelPath, reason: "segment \(index) at 0x\(hex(segment.physicalAddress)) is below 1 MiB, where Tern keeps boot data; link the kernel at 1 MiB or above")
            }
            do {
                let destination = try memory.pointer(at: segment.physicalAddress, length: segment.memorySize)
                destination.copyMemory(from: bytes.baseAddress!.advanced(by: Int(segment.fileOffset)), byteCount: Int(segment.fileSize))
                if !memoryIsZeroed {
                    destination.advanced(by: Int(segment.fileSize)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(segment.memorySize - segment.fileSize))
                }
            } catch {
                throw BootError(path: kernelPath, reason: "segment \(index) (0x\(hex(segment.physicalAddress))+0x\(hex(segment.memorySize))) lies outside guest RAM of \(memory.size >> 20) MiB; give the guest more memory with --memory")
            }
            kernelEnd = max(kernelEnd, segment.physicalAddress + segment.memorySize)
        }
        try writeCommandLine(commandLine, limit: BootLayout.commandLineCapacity - 1, memory: memory)
        let initrd = try initrdPath.map { (path) throws(BootError) in
            try placeInitrd(path: path, above: kernelEnd, limit: initrdLimit, in: memory)
        }
        let memoryMap = MemoryMapEntry.map(for: memory)
        try writeStartInfo(memory: memory, memoryMap: memoryMap, initrd: initrd, rsdpAddress: rsdpAddress)

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
            systemRegisters = try prepareLongMode(memory: memory)
            registers.rip = image.entry
            registers.rsp = BootLayout.bootStack
            registers.rbp = BootLayout.bootStack
            registers.rbx = BootLayout.startInfo
            registers.rdi = BootLayout.startInfo
        }
        return BootPlan(bootProtocol: bootProtocol, hostDecompressed: nil, registers: registers, systemRegisters: systemRegisters,
                        kernelEnd: kernelEnd, initrd: initrd, memoryMap: memoryMap)
    }

    /// Loads a bzImage for the 64-bit boot protocol: protected-mode code at 1 MiB, a zero page, identity paging.
    static func loadBzImage(_ kernel: borrowing MappedFile, header: SetupHeader, initrdPath: String?, commandLine: String,
                            memory: GuestMemory, rsdpAddress: UInt64?) throws(BootError) -> BootPlan {
        let kernelPath = kernel.path
        let load = BootLayout.highMemory
        let code = UnsafeRawBufferPointer(rebasing: kernel.bytes[header.protectedModeOffset...])
        let kernelEnd = load + max(UInt64(code.count), UInt64(header.initSize))
        guard memory.contains(load, length: kernelEnd - load) else {
            throw BootError(path: kernelPath, reason: "the kernel needs \((kernelEnd - load) >> 20) MiB above 1 MiB to decompress and run, more than guest RAM of \(memory.size >> 20) MiB; raise --memory")
        }
        try writeBootData(memory) { () throws(GuestMemoryError) in try memory.write(code, at: load) }
        let limit = min(BootLayout.commandLineCapacity - 1, header.commandLineSize == 0 ? 255 : Int(header.commandLineSize))
        try writeCommandLine(commandLine, limit: limit, memory: memory)
        let initrd = try initrdPath.map { (path) throws(BootError) in
            try placeInitrd(path: path, above: kernelEnd, limit: min(initrdLimit, UInt64(header.initrdAddressMax) + 1), in: memory)
        }
        let memoryMap = MemoryMapEntry.map(for: memory)
        guard memoryMap.count <= ZeroPage.e820Capacity else {
            throw BootError(path: kernelPath, reason: "the memory map has \(memoryMap.count) entries, more than the zero page holds")
        }

        try writeBootData(memory) { () throws(GuestMemoryError) in
            let page = BootLayout.zeroPage
            try memory.zero(at: page, length: UInt64(ZeroPage.size))
            let headerBytes = UnsafeRawBufferPointer(rebasing: kernel.bytes[SetupHeader.offset..<header.end])
            try memory.write(headerBytes, at: page + UInt64(SetupHeader.offset))
            try memory.store(ZeroPage.undefinedLoader, at: page + UInt64(ZeroPage.typeOfLoader))
            try memory.store(header.loadFlags | ZeroPage.loadedHigh | ZeroPage.canUseHeap, at: page + UInt64(ZeroPage.loadFlags))
            try memory.store(UInt16(0xFE00), at: page + UInt64(ZeroPage.heapEndPointer))
            try memory.store(UInt16(0xFFFF), at: page + UInt64(ZeroPage.videoMode))
            try memory.store(UInt32(BootLayout.commandLine), at: page + UInt64(ZeroPage.commandLinePointer))
            try memory.store(UInt32(initrd?.address ?? 0), at: page + UInt64(ZeroPage.ramdiskImage))
            try memory.store(UInt32(initrd?.size ?? 0), at: page + UInt64(ZeroPage.ramdiskSize))
            try memory.store(rsdpAddress ?? 0, at: page + UInt64(ZeroPage.acpiRSDPAddress))
            try memory.store(UInt8(memoryMap.count), at: page + UInt64(ZeroPage.e820Entries))
            for (index, entry) in memoryMap.enumerated() {
                let slot = page + UInt64(ZeroPage.e820Table + index * 20)
                try memory.store(entry.address, at: slot)
                try memory.store(entry.size, at: slot + 8)
                try memory.store(entry.kind.rawValue, at: slot + 16)
            }
        }

        var registers = GeneralRegisters()
        registers.rip = load + 0x200
        registers.rsi = BootLayout.zeroPage
        registers.rsp = BootLayout.bootStack
        registers.rbp = BootLayout.bootStack
        return BootPlan(bootProtocol: .bzImage, hostDecompressed: nil, registers: registers, systemRegisters: try prepareLongMode(memory: memory),
                        kernelEnd: kernelEnd, initrd: initrd, memoryMap: memoryMap)
    }

    /// Writes the boot GDT and identity page tables for a 64-bit entry and returns the matching system registers.
    static func prepareLongMode(memory: GuestMemory) throws(BootError) -> SystemRegisters {
        let tables = IdentityPageTables(base: BootLayout.pageTables, gigabytes: 4)
        try writeTable(tables.entries(), at: tables.base, memory: memory)
        try writeTable(BootState.bootGDT(longMode: true), at: BootLayout.gdt, memory: memory)
        return BootState.longModeEntry(gdtBase: BootLayout.gdt, pml4: tables.base)
    }

    static func writeCommandLine(_ commandLine: String, limit: Int, memory: GuestMemory) throws(BootError) {
        let commandBytes = Array(commandLine.utf8)
        guard commandBytes.count <= limit else {
            throw BootError(path: "command line", reason: "\(commandBytes.count) bytes is longer than the \(limit) the kernel accepts; shorten --cmdline")
        }
        guard !commandBytes.contains(0) else { throw BootError(path: "command line", reason: "contains a NUL byte") }
        try writeBootData(memory) { () throws(GuestMemoryError) in
            try memory.write(commandBytes + [0], at: BootLayout.commandLine)
        }
    }

    /// Puts the initrd as high as possible in low RAM, page aligned, above the kernel.
    static func placeInitrd(path: String, above kernelEnd: UInt64, limit: UInt64, in memory: GuestMemory) throws(BootError) -> (address: UInt64, size: UInt64) {
        let file = try MappedFile(path: path)
        let size = UInt64(file.bytes.count)
        let lowRAMEnd = min(memory.regions[0].end, limit)
        let floor = (kernelEnd + 0xFFF) & ~0xFFF
        guard lowRAMEnd > floor, lowRAMEnd - floor >= size else {
            throw BootError(path: path, reason: "the initrd (\(size >> 10) KiB) does not fit in guest RAM above the kernel; raise --memory")
        }
        let address = (lowRAMEnd - size) & ~0xFFF
        try writeBootData(memory) { () throws(GuestMemoryError) in try memory.write(file.bytes, at: address) }
        return (address, size)
    }

    /// Writes `hvm_start_info` (version 1), its module list and memory map.
    static func writeStartInfo(memory: GuestMemory, memoryMap: [MemoryMapEntry], initrd: (address: UInt64, size: UInt64)?,
                               rsdpAddress: UInt64?) throws(BootError) {
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
            try memory.store(rsdpAddress ?? 0, at: base + 32)
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

import ACPI
import Firmware
import Testing

/// Runs table-loader commands as SeaBIOS's romfile_loader.c does, placing the files at fixed addresses.
struct LoaderRun {
    var files: [String: [UInt8]]
    var addresses: [String: UInt64] = [:]
    var zones: [String: UInt8] = [:]

    static func name(_ bytes: ArraySlice<UInt8>) -> String {
        String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }

    mutating func run(_ commands: [UInt8], placing placements: [String: UInt64]) throws {
        #expect(commands.count % ACPITableLoader.commandLength == 0)
        for start in stride(from: 0, to: commands.count, by: ACPITableLoader.commandLength) {
            let command = Array(commands[start..<start + ACPITableLoader.commandLength])
            switch command.littleEndian(UInt32.self, at: 0) {
            case ACPITableLoader.Command.allocate:
                let file = Self.name(command[4..<60])
                #expect(files[file] != nil)
                #expect(addresses[file] == nil, "allocated once")
                let alignment = command.littleEndian(UInt32.self, at: 60)
                let address = try #require(placements[file])
                #expect(address % UInt64(alignment) == 0)
                addresses[file] = address
                zones[file] = command[64]
            case ACPITableLoader.Command.addPointer:
                let destination = Self.name(command[4..<60])
                let source = Self.name(command[60..<116])
                let offset = Int(command.littleEndian(UInt32.self, at: 116))
                let size = Int(command[120])
                let base = try #require(addresses[source])
                var bytes = try #require(files[destination])
                #expect(addresses[destination] != nil)
                var value: UInt64 = 0
                for index in 0..<size { value |= UInt64(bytes[offset + index]) << (8 * UInt64(index)) }
                value &+= base
                for index in 0..<size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
                files[destination] = bytes
            case ACPITableLoader.Command.addChecksum:
                let file = Self.name(command[4..<60])
                let offset = Int(command.littleEndian(UInt32.self, at: 60))
                let first = Int(command.littleEndian(UInt32.self, at: 64))
                let length = Int(command.littleEndian(UInt32.self, at: 68))
                var bytes = try #require(files[file])
                bytes[offset] &-= bytes[first..<first + length].reduce(0, &+)
                files[file] = bytes
            default:
                Issue.record("unknown command \(command.littleEndian(UInt32.self, at: 0))")
            }
        }
    }

    /// The bytes at guest address `address`, in whichever file holds them.
    func bytes(at address: UInt64, count: Int) -> [UInt8]? {
        for (file, base) in addresses where address >= base {
            if let bytes = files[file], address - base + UInt64(count) <= UInt64(bytes.count) {
                let start = Int(address - base)
                return Array(bytes[start..<start + count])
            }
        }
        return nil
    }
}

@Suite struct ACPITableLoaderTests {
    static func platform() -> PlatformDescription {
        PlatformDescription(vcpuCount: 2, pciHostBridge: PCIHostBridge(ecamBase: 0xE000_0000, busRange: 0...0,
                                                                        mmio32: 0xC000_0000...0xDFFF_FFFF))
    }

    @Test func loadedTablesPointAtEachOtherWithValidChecksums() throws {
        let set = try ACPIBuilder.build(Self.platform(), at: 0)
        let loader = try ACPITableLoader(set)
        var run = LoaderRun(files: [ACPITableLoader.rsdpFile: loader.rsdp, ACPITableLoader.tablesFile: loader.tables])
        try run.run(loader.commands, placing: [ACPITableLoader.rsdpFile: 0xF_5A40, ACPITableLoader.tablesFile: 0x7FE_0000])
        #expect(run.zones[ACPITableLoader.rsdpFile] == ACPITableLoader.Zone.fSegment)
        #expect(run.zones[ACPITableLoader.tablesFile] == ACPITableLoader.Zone.high)

        let rsdp = try #require(run.files[ACPITableLoader.rsdpFile])
        #expect(Array(rsdp[0..<8]) == Array("RSD PTR ".utf8))
        #expect(rsdp[0..<20].reduce(0, &+) == 0)
        #expect(rsdp.reduce(0, &+) == 0)
        let xsdtAddress = rsdp.littleEndian(UInt64.self, at: 24)
        let xsdtHeader = try #require(run.bytes(at: xsdtAddress, count: 36))
        #expect(Array(xsdtHeader[0..<4]) == Array("XSDT".utf8))
        let xsdt = try #require(run.bytes(at: xsdtAddress, count: Int(xsdtHeader.littleEndian(UInt32.self, at: 4))))
        #expect(xsdt.reduce(0, &+) == 0)

        var signatures: [String] = []
        for entry in stride(from: 36, to: xsdt.count, by: 8) {
            let address = xsdt.littleEndian(UInt64.self, at: entry)
            let header = try #require(run.bytes(at: address, count: 36))
            let table = try #require(run.bytes(at: address, count: Int(header.littleEndian(UInt32.self, at: 4))))
            #expect(table.reduce(0, &+) == 0, "checksum of \(String(decoding: header[0..<4], as: UTF8.self))")
            signatures.append(String(decoding: header[0..<4], as: UTF8.self))
            if signatures.last == "FACP" {
                let dsdt = table.littleEndian(UInt64.self, at: 140)
                #expect(UInt64(table.littleEndian(UInt32.self, at: 40)) == dsdt)
                let dsdtHeader = try #require(run.bytes(at: dsdt, count: 36))
                #expect(Array(dsdtHeader[0..<4]) == Array("DSDT".utf8))
                let dsdtTable = try #require(run.bytes(at: dsdt, count: Int(dsdtHeader.littleEndian(UInt32.self, at: 4))))
                #expect(dsdtTable.reduce(0, &+) == 0)
            }
        }
        #expect(signatures == ["FACP", "APIC", "MCFG"])
    }

    @Test func tablesMatchTheDirectBootTablesApartFromAddresses() throws {
        let direct = try ACPIBuilder.build(Self.platform(), at: 0)
        let loader = try ACPITableLoader(direct)
        let madt = try #require(direct.bytes(of: "APIC"))
        let start = Int(direct.tables[1].address)
        let offset = Int(try #require(direct.tables.first { $0.signature == "APIC" }).address) - start
        #expect(Array(loader.tables[offset..<offset + madt.count]) == Array(madt))
    }

    @Test func setsNotBuiltAtZeroAreRefused() throws {
        let set = try ACPIBuilder.build(Self.platform(), at: 0xE0000)
        #expect(throws: ACPITableLoader.LoaderError.self) { try ACPITableLoader(set) }
    }
}

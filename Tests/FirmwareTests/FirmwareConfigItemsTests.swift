import Firmware
import Testing

@Suite struct FirmwareConfigItemsTests {
    @Test func signatureAndIDAdvertiseTheDMAInterface() {
        let items = FirmwareConfigItems()
        #expect(items.content(of: FirmwareConfigItems.Key.signature) == Array("QEMU".utf8))
        let id = items.content(of: FirmwareConfigItems.Key.id)
        #expect(id == [3, 0, 0, 0])
        #expect(items.content(of: 0x1234).isEmpty)
    }

    @Test func directoryListsFilesBigEndianInOrder() throws {
        var items = FirmwareConfigItems()
        #expect(try items.addFile("etc/first", [1, 2, 3]) == 0x20)
        #expect(try items.addFile("second", Array(repeating: 7, count: 300)) == 0x21)
        let directory = items.content(of: FirmwareConfigItems.Key.fileDirectory)
        #expect(directory.count == 4 + 2 * 64)
        #expect(directory.bigEndian(UInt32.self, at: 0) == 2)
        #expect(directory.bigEndian(UInt32.self, at: 4) == 3)
        #expect(directory.bigEndian(UInt16.self, at: 8) == 0x20)
        #expect(Array(directory[12..<21]) == Array("etc/first".utf8))
        #expect(directory[21..<68].allSatisfy { $0 == 0 })
        #expect(directory.bigEndian(UInt32.self, at: 68) == 300)
        #expect(directory.bigEndian(UInt16.self, at: 72) == 0x21)
        #expect(items.key(of: "second") == 0x21)
        #expect(items.content(of: 0x21).count == 300)
    }

    @Test func badNamesAreRefused() throws {
        var items = FirmwareConfigItems()
        try items.addFile("a", [])
        #expect(throws: FirmwareConfigItems.ItemError.duplicateName("a")) { try items.addFile("a", [1]) }
        let long = String(repeating: "x", count: 56)
        #expect(throws: FirmwareConfigItems.ItemError.nameTooLong(long)) { try items.addFile(long, [1]) }
        #expect(throws: FirmwareConfigItems.ItemError.nameTooLong("")) { try items.addFile("", [1]) }
        try items.addFile(String(repeating: "y", count: 55), [1])
    }

    @Test func numericItemsAreLittleEndian() {
        var items = FirmwareConfigItems()
        items.set(FirmwareConfigItems.Key.ramSize, integer: UInt64(0x1_2345_6789))
        #expect(items.content(of: FirmwareConfigItems.Key.ramSize) == [0x89, 0x67, 0x45, 0x23, 1, 0, 0, 0])
    }
}

import GuestMemory
import PCI
import TestSupport
import Testing
import Virtio
import VirtioPCI

/// A device with many queues and a configuration space of its own, to check the layout and the pass-through.
struct WideDevice: VirtioDevice {
    var configuration: [UInt8] = (0..<0x104).map { UInt8(truncatingIfNeeded: $0) }
    let queues: Int

    var deviceType: VirtioDeviceType { .network }
    var features: VirtioFeatures { [.version1] }
    var queueCount: Int { queues }
    func maximumQueueSize(_ queue: Int) -> UInt16 { 256 }
    var configurationSize: Int { configuration.count }

    func readConfiguration(offset: Int, into buffer: UnsafeMutableRawBufferPointer) {
        for index in buffer.indices {
            buffer[index] = offset + index < configuration.count ? configuration[offset + index] : 0
        }
    }

    mutating func writeConfiguration(offset: Int, bytes: UnsafeRawBufferPointer) {
        for (index, byte) in bytes.enumerated() where offset + index < configuration.count {
            configuration[offset + index] = byte
        }
    }

    mutating func activate(
        features: VirtioFeatures, queues: [SplitQueue?], interrupt: any InterruptSignal
    ) throws(VirtioDeviceError) {}
    mutating func notify(queue: Int) {}
    mutating func reset() {}
}

@Suite struct LayoutTests {
    /// The transport of a `WideDevice` with `queues` queues, with its configuration space read through a root.
    private func make(queues: Int) throws -> (VirtioPCITransport, PCIRoot) {
        let memory = try GuestMemory(size: GuestMemory.minimumSize)
        // As the VMM does: size the BAR from the device, then hand the device over.
        let device: any VirtioDevice = WideDevice(queues: queues)
        let barAddress = 0xC000_0000 & ~(VirtioPCITransport.barSize(for: device) - 1)
        let transport = VirtioPCITransport(
            device: device, memory: memory, barAddress: barAddress, interrupt: RecordingLine(), msix: RecordingRouting())
        return (transport, try PCIRoot(devices: [transport]))
    }

    @Test func largeDevicesGetALargerBAR() throws {
        let (transport, root) = try make(queues: 200)
        #expect(transport.queueCount == 200)
        #expect(VirtioPCITransport.msixVectorCount(queueCount: 200) == 201)
        #expect(transport.barSize == 0x8000)
        #expect(VirtioPCITransport.barSize(for: WideDevice(queues: 200)) == 0x8000)
        #expect(VirtioPCITransport.barSize(for: WideDevice(queues: 1)) == 0x4000)
        func config(_ offset: Int, _ width: Int = 4) -> UInt32 {
            root.readConfiguration(PCIAddress(device: 1), offset: offset, width: width)
        }
        #expect(config(0x00) == 0x1041_1AF4)  // virtio-net
        #expect(config(0x08) >> 8 == 0x02_0000)  // Ethernet controller
        var position = Int(config(0x34, 1))
        var found: [UInt8: Int] = [:]
        while position != 0 {
            let id = UInt8(config(position, 1))
            found[id == 0x09 ? UInt8(config(position + 3, 1)) : id] = position
            position = Int(config(position + 1, 1))
        }
        let msix = try #require(found[0x11])
        #expect(config(msix + 2, 2) == 200)  // table size 201
        #expect(config(msix + 4) == 0x3000)
        #expect(config(msix + 8) == 0x3000 + 0x1000)  // 201 entries take 0xC90 bytes
        let notify = try #require(found[2])
        #expect(config(notify + 12) == 800)
        let device = try #require(found[4])
        #expect(config(device + 12) == 0x104)
        #expect(transport.notifyOffset(queue: 199) == 0x2000 + 4 * 199)
    }

    @Test func deviceConfigurationPassesThroughAtEveryWidth() throws {
        let (transport, root) = try make(queues: 2)
        root.writeConfiguration(PCIAddress(device: 1), offset: 0x04, width: 2, value: 2)
        func read(_ offset: UInt64, _ width: Int) -> UInt64 {
            var value: UInt64 = 0
            withUnsafeMutableBytes(of: &value) {
                root.readMemory(at: 0xC000_1000 + offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<width]))
            }
            return value
        }
        #expect(read(0, 1) == 0x00)
        #expect(read(1, 2) == 0x0201)
        #expect(read(4, 4) == 0x0706_0504)
        #expect(read(8, 8) == 0x0F0E_0D0C_0B0A_0908)
        #expect(read(0x100, 4) == 0x0302_0100)  // the last dword: bytes 0x100–0x103 hold 0x00–0x03
        #expect(read(0x102, 4) == 0)  // runs past the structure's 0x104 bytes: ignored
        let value: UInt32 = 0xA1B2_C3D4
        withUnsafeBytes(of: value.littleEndian) { root.writeMemory(at: 0xC000_1010, from: $0) }
        #expect(read(0x10, 4) == 0xA1B2_C3D4)
        let bytes = transport.withDevice { device in (device as? WideDevice)?.configuration[0x10..<0x14].map { $0 } }
        #expect(bytes == [0xD4, 0xC3, 0xB2, 0xA1])
    }
}

import Synchronization

/// PCI segment 0 with its one bus: the host bridge at 00:00.0 and single-function devices at 00:01.0, 00:02.0, ...
///
/// Configuration accesses arrive from the front ends (`PCIECAM`, `PCIConfigurationPorts`) and go to the function
/// addressed; absent functions and other buses read as all ones and ignore writes. Memory accesses arrive from
/// `PCIMemoryWindow`s and go to the function whose mapped BAR holds the whole access: the root keeps a table of
/// mapped BARs, rebuilt for a function after every write to its Command register or BARs, so the guest may move
/// BARs and switch decoding at any time. Where a guest makes BARs overlap, the function in the lower slot wins.
public final class PCIRoot: Sendable {
    /// Devices bus 0 holds beside the host bridge.
    public static let maximumDevices = 31

    private struct Route {
        let base: UInt64
        let size: UInt64
        let bar: Int
        let slot: Int
        let device: any PCIDevice
    }

    /// Function 0 of each slot, by device number.
    private let slots: [(any PCIDevice)?]
    /// Every mapped BAR, in slot order.
    private let routes = Mutex<[Route]>([])

    /// Places `hostBridge` at 00:00.0 and `devices[i]` at 00:(i+1).0, routing the BARs they already decode.
    public init(hostBridge: any PCIDevice = PCIHostBridgeDevice(), devices: [any PCIDevice]) throws(PCIError) {
        guard devices.count <= Self.maximumDevices else { throw .tooManyDevices(devices.count) }
        var slots: [(any PCIDevice)?] = [hostBridge] + devices
        slots += Array(repeating: nil, count: 32 - slots.count)
        self.slots = slots
        for slot in slots.indices { refreshRoutes(slot: slot) }
    }

    /// Where `devices[index]` of `init(hostBridge:devices:)` sits.
    public static func address(ofDevice index: Int) -> PCIAddress {
        PCIAddress(device: UInt8(index + 1))
    }

    /// The function at `address`, if any.
    public func function(at address: PCIAddress) -> (any PCIDevice)? {
        address.bus == 0 && address.function == 0 ? slots[Int(address.device)] : nil
    }

    // MARK: Configuration space

    /// A configuration read; all ones for an absent function or an access `PCIConfigurationAccess` refuses.
    public func readConfiguration(_ address: PCIAddress, offset: Int, width: Int) -> UInt32 {
        guard PCIConfigurationAccess.isValid(offset: offset, width: width), let device = function(at: address) else {
            return PCIConfigurationAccess.absent(width: width)
        }
        return device.readConfiguration(offset: offset, width: width)
    }

    /// A configuration write; ignored for an absent function or an access `PCIConfigurationAccess` refuses.
    public func writeConfiguration(_ address: PCIAddress, offset: Int, width: Int, value: UInt32) {
        guard PCIConfigurationAccess.isValid(offset: offset, width: width), let device = function(at: address) else {
            return
        }
        device.writeConfiguration(offset: offset, width: width, value: value)
        let command = PCIConfigSpace.Register.command
        let bars = PCIConfigSpace.Register.bar0..<PCIConfigSpace.Register.bar0 + 24
        if (command..<command + 2).overlaps(offset..<offset + width) || bars.overlaps(offset..<offset + width) {
            refreshRoutes(slot: Int(address.device))
        }
    }

    /// Replaces the routes of `slot` with the BARs its function maps now. The function is asked under the lock,
    /// so concurrent refreshes cannot leave an older answer in the table.
    private func refreshRoutes(slot: Int) {
        guard let device = slots[slot] else { return }
        routes.withLock { routes in
            routes.removeAll { $0.slot == slot }
            let position = routes.firstIndex { $0.slot > slot } ?? routes.endIndex
            routes.insert(
                contentsOf: device.mappedBARs().map {
                    Route(base: $0.base, size: $0.size, bar: $0.index, slot: slot, device: device)
                }, at: position)
        }
    }

    // MARK: BAR memory

    /// A read at guest-physical `address`; all ones when no mapped BAR holds the whole access.
    public func readMemory(at address: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard let (device, bar, offset) = route(address, length: data.count) else {
            return fillAllOnes(data)
        }
        device.readBAR(bar, offset: offset, into: data)
    }

    /// A write at guest-physical `address`; dropped when no mapped BAR holds the whole access.
    public func writeMemory(at address: UInt64, from data: UnsafeRawBufferPointer) {
        guard let (device, bar, offset) = route(address, length: data.count) else { return }
        device.writeBAR(bar, offset: offset, from: data)
    }

    /// The function, BAR and offset in it of a `length`-byte access at `address`.
    private func route(_ address: UInt64, length: Int) -> (any PCIDevice, Int, UInt64)? {
        routes.withLock { routes in
            for route in routes where address >= route.base {
                let offset = address - route.base
                if offset < route.size && UInt64(length) <= route.size - offset { return (route.device, route.bar, offset) }
            }
            return nil
        }
    }
}

import ACPI
import Glibc
import Devices
import GuestMemory
import KVM
import Logging
import Synchronization
import Virtio
import VirtioMMIO

/// What the VMM needs from a VirtIO transport, whichever it is: deliver queue notifications and host events
/// from the I/O thread, and reach the device for host-initiated work.
protocol VirtioTransport: AnyObject, Sendable {
    /// Number of queues the device has.
    var queueCount: Int { get }
    /// An available-buffer notification for `queue`, arriving through an ioeventfd.
    func notify(queue: Int)
    /// A host descriptor the device watches became ready.
    func hostEvent(token: UInt32, events: HostEventKind)
    /// Runs `body` on the device under the transport's lock.
    func withDevice<R>(_ body: (inout any VirtioDevice) -> sending R) -> sending R
}

extension VirtioMMIOTransport: VirtioTransport {}

/// A transport that exists only after the device it carries was made: host events reach the device through it.
final class TransportReference: Sendable {
    private let transport = Mutex<(any VirtioTransport)?>(nil)

    func bind(_ value: any VirtioTransport) { transport.withLock { $0 = value } }

    func hostEvent(token: UInt32, events: HostEventKind) {
        transport.withLock { $0 }?.hostEvent(token: token, events: events)
    }
}

/// One VirtIO device the machine offers, made when its transport takes it over so that it is never shared.
struct VirtioDeviceSpec {
    enum Role { case disk, console, other }

    /// Names the device in log lines: "virtio-blk 0", "virtio-rng".
    let name: String
    let role: Role
    let make: (any HostEventWatcher) -> any VirtioDevice
}

extension Machine {
    /// Puts each device on virtio-mmio: one 512-byte window and one level-triggered IOAPIC input each, from
    /// `virtioMMIOBase` and GSI `virtioFirstGSI` up. Queue notifications go through ioeventfds to the device's
    /// I/O thread (`ioThreads`, one per spec); should KVM refuse one, the MMIO exit still works.
    static func attachMMIO(
        _ specs: [VirtioDeviceSpec], memory: GuestMemory, vm: VirtualMachine, bus: inout Bus, ioThreads: [IOThread],
        logger: Logger
    ) throws(MachineError) -> ([VirtioMMIODevice], [any VirtioTransport]) {
        var slots: [VirtioMMIODevice] = []
        var transports: [any VirtioTransport] = []
        for (spec, ioThread) in zip(specs, ioThreads) {
            let index = UInt32(slots.count)
            let slot = VirtioMMIODevice(base: virtioMMIOBase + index * virtioMMIOStride, size: virtioMMIOStride,
                                        gsi: virtioFirstGSI + index)
            guard slot.gsi < ioapicInputs else {
                throw MachineError("too many virtio devices: at most \(ioapicInputs - virtioFirstGSI) fit virtio-mmio's IOAPIC inputs; use --virtio-transport pci")
            }
            let reference = TransportReference()
            let watcher = ioThread.addDevice { token, events in reference.hostEvent(token: token, events: events) }
            let name = spec.name
            let transport = VirtioMMIOTransport(device: spec.make(watcher), memory: memory,
                                                interrupt: KVMInterruptLine(vm: vm, gsi: slot.gsi),
                                                debugLog: { [logger] line in logger.debug("\(name): \(line)") },
                                                errorLog: { [logger] line in logger.warning("\(name): \(line)") })
            reference.bind(transport)
            do {
                try bus.register(transport, base: UInt64(slot.base), length: UInt64(slot.size))
            } catch {
                throw MachineError("device layout: \(error)")
            }
            var descriptors: [Int32] = []
            for queue in 0..<transport.queueCount {
                let descriptor = try ioThread.addEvent { transport.notify(queue: queue) }
                descriptors.append(descriptor)
                do {
                    try vm.registerNotification(mmioAddress: UInt64(slot.base) + VirtioMMIOTransport.queueNotifyOffset,
                                                length: 4, value: UInt64(queue), descriptor: descriptor)
                } catch {
                    logger.info("\(name) queue notifications stay on vCPU threads: \(error)")
                }
            }
            transport.setServiceRequestHandler { [descriptors] queue in
                guard descriptors.indices.contains(queue) else { return }
                var one: UInt64 = 1
                _ = write(descriptors[queue], &one, 8)
            }
            slots.append(slot)
            transports.append(transport)
        }
        return (slots, transports)
    }
}

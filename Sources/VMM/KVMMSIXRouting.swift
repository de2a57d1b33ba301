import CKVM
import Glibc
import KVM
import Logging
import PCI
import Synchronization

/// The VM's GSI routing table: KVM's default irqchip routes (GSIs 0–23) plus one MSI route per MSI-X vector that
/// may fire, on GSIs allocated from 24 up. KVM_SET_GSI_ROUTING replaces the whole table, so every change rewrites
/// it, under one lock because vCPU threads of different devices change routes at once. One per VM.
final class KVMGSIRouter: Sendable {
    /// The first GSI above the IOAPIC's inputs.
    static let firstMSIGSI: UInt32 = 24
    /// KVM_MAX_IRQ_ROUTES on x86: GSIs at or above it are refused.
    static let gsiLimit: UInt32 = 4096

    private struct Table {
        /// The MSI route of each allocated GSI, by GSI - `firstMSIGSI`; nil while its vector may not fire.
        var messages: [(address: UInt64, data: UInt32)?] = []
        /// The table last handed to KVM, kept so that its storage is reused.
        var routes: [GSIRoute] = GSIRoute.defaultIRQChipRoutes
    }

    private let vm: VirtualMachine
    private let logger: Logger
    private let table = Mutex(Table())

    init(vm: VirtualMachine, logger: Logger) {
        self.vm = vm
        self.logger = logger
    }

    /// Reserves `count` consecutive GSIs for MSI routes, none routed yet; returns the first.
    func allocate(count: Int) throws(MachineError) -> UInt32 {
        try table.withLock { table throws(MachineError) in
            let first = Self.firstMSIGSI + UInt32(table.messages.count)
            guard count <= Int(Self.gsiLimit - first) else {
                throw MachineError("MSI-X: \(count) more vectors exceed KVM's \(Self.gsiLimit) GSIs")
            }
            table.messages += Array(repeating: nil, count: count)
            table.routes.reserveCapacity(GSIRoute.defaultIRQChipRoutes.count + table.messages.count)
            return first
        }
    }

    /// Routes `gsi` to `message`, or removes its route when nil, and hands KVM the new table.
    func setRoute(gsi: UInt32, _ message: (address: UInt64, data: UInt32)?) {
        table.withLock { table in
            table.messages[Int(gsi - Self.firstMSIGSI)] = message
            table.routes.removeAll(keepingCapacity: true)
            table.routes.append(contentsOf: GSIRoute.defaultIRQChipRoutes)
            for (index, message) in table.messages.enumerated() {
                guard let message else { continue }
                table.routes.append(.msi(gsi: Self.firstMSIGSI + UInt32(index), address: message.address, data: message.data))
            }
            do {
                try vm.setGSIRouting(table.routes)
            } catch {
                logger.warning("MSI-X route for GSI \(gsi): \(error)")
            }
        }
    }
}

/// The MSI-X vectors of one PCI function, delivered by KVM: each vector owns a GSI, an eventfd and an irqfd that
/// binds the two. `update` points the GSI at the vector's message, or removes the route while the vector may not
/// fire; `trigger` signals the eventfd, and KVM injects the message without leaving the kernel.
final class KVMMSIXRouting: MSIXRouting {
    private let vm: VirtualMachine
    private let router: KVMGSIRouter
    private let firstGSI: UInt32
    private let eventfds: [Int32]

    /// Sets up `vectorCount` vectors on GSIs from `router`.
    init(vm: VirtualMachine, router: KVMGSIRouter, vectorCount: Int) throws(MachineError) {
        let firstGSI = try router.allocate(count: vectorCount)
        var eventfds: [Int32] = []
        func release() {
            for (vector, descriptor) in eventfds.enumerated() {
                try? vm.unregisterIrqfd(eventfd: descriptor, gsi: firstGSI + UInt32(vector))
                close(descriptor)
            }
        }
        for vector in 0..<vectorCount {
            let descriptor = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
            guard descriptor >= 0 else {
                release()
                throw MachineError("MSI-X: eventfd: \(String(cString: strerror(errno)))")
            }
            do {
                try vm.registerIrqfd(eventfd: descriptor, gsi: firstGSI + UInt32(vector))
            } catch {
                close(descriptor)
                release()
                throw MachineError("MSI-X: \(error)")
            }
            eventfds.append(descriptor)
        }
        self.vm = vm
        self.router = router
        self.firstGSI = firstGSI
        self.eventfds = eventfds
    }

    deinit {
        for (vector, descriptor) in eventfds.enumerated() {
            try? vm.unregisterIrqfd(eventfd: descriptor, gsi: firstGSI + UInt32(vector))
            close(descriptor)
        }
    }

    func update(vector: Int, address: UInt64, data: UInt32, enabled: Bool) {
        guard eventfds.indices.contains(vector) else { return }
        router.setRoute(gsi: firstGSI + UInt32(vector), enabled ? (address, data) : nil)
    }

    func trigger(vector: Int) {
        guard eventfds.indices.contains(vector) else { return }
        var one: UInt64 = 1
        _ = write(eventfds[vector], &one, 8)
    }
}

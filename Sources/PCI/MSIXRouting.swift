/// Where a function's MSI-X messages go: the VMM turns each vector into an interrupt route (for KVM, a GSI with
/// an MSI routing entry and an irqfd).
///
/// `MSIXTable` calls `update` whenever a vector's effective route changes — its address or data while it may
/// fire, or whether it may fire at all (MSI-X enable, function mask, vector mask) — and `trigger` only for a
/// vector that may fire. Both come from vCPU or I/O threads, serialised per function.
public protocol MSIXRouting: Sendable {
    /// Vector `vector` now sends `data` to `address` when `enabled`; when not, it must have no route.
    func update(vector: Int, address: UInt64, data: UInt32, enabled: Bool)
    /// Sends vector `vector`'s message.
    func trigger(vector: Int)
}

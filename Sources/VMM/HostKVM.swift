import KVM

/// The host's KVM as `tern version` reports it.
public enum HostKVM {
    /// "API version 12 at /dev/kvm, hardware virtualisation", or why the device cannot be used.
    public static func describe(device: String) -> String {
        do {
            let hypervisor = try Hypervisor(path: device)
            let backend = hypervisor.backend == .software ? "software virtualisation (kvm_pvm)" : "hardware virtualisation"
            return "API version \(Hypervisor.apiVersion) at \(device), \(backend)"
        } catch {
            return "unavailable: \(error)"
        }
    }
}

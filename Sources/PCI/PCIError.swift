/// Why a PCI topology cannot be built.
public enum PCIError: Error, Equatable, Sendable, CustomStringConvertible {
    /// More devices than the 31 slots bus 0 has beside the host bridge.
    case tooManyDevices(Int)

    public var description: String {
        switch self {
        case .tooManyDevices(let count):
            "\(count) PCI devices exceed the \(PCIRoot.maximumDevices) slots of bus 0 beside the host bridge"
        }
    }
}

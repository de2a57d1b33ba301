import ToolstackAPI

/// Why a toolstack operation was refused or failed; each case maps to one HTTP status.
public enum ToolstackError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The request is malformed; `field` names the part at fault.
    case invalid(field: String, message: String)
    /// No VM has this name.
    case notFound(name: String)
    /// The VM's state (or the VM itself) does not allow the operation.
    case conflict(message: String)
    /// The host failed: a database write, a process that could not be started.
    case failure(message: String)

    public var description: String {
        switch self {
        case .invalid(let field, let message): "\(field): \(message)"
        case .notFound(let name): "no VM is named '\(name)'; `tern vm list` shows the VMs"
        case .conflict(let message), .failure(let message): message
        }
    }

    /// The HTTP status code for this error.
    public var statusCode: Int {
        switch self {
        case .invalid: 400
        case .notFound: 404
        case .conflict: 409
        case .failure: 500
        }
    }

    /// The JSON body for this error.
    public var body: APIError {
        switch self {
        case .invalid(let field, _): APIError(description, field: field)
        case .notFound: APIError(description, field: "name")
        case .conflict, .failure: APIError(description)
        }
    }
}

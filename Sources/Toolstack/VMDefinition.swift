import FoundationEssentials
import Glibc
import ToolstackAPI
import VMM

/// Checks a `POST /v1/vms` request and turns it into the record to store: the name is valid, the settings are what
/// `tern run --config` accepts, their host paths are absolute, and ternd's own settings are left to ternd.
enum VMDefinition {
    /// Settings ternd chooses for every VM (its control socket and console log); a request may not give them.
    static let reservedKeys = ["api_socket", "console"]

    static func record(for request: CreateVMRequest) throws(ToolstackError) -> VMRecord {
        try validate(name: request.name)
        guard var settings = request.config.objectValue else {
            throw .invalid(field: "config", message: "give a JSON object of `tern run --config` settings, such as {\"kernel\": \"/path/guest.elf\"}")
        }
        for key in reservedKeys where settings[key] != nil {
            throw .invalid(field: "config.\(key)", message: "ternd sets \(key) for every VM; leave it out")
        }
        if let given = settings["name"], given != .string(request.name) {
            throw .invalid(field: "config.name", message: "differs from the VM's name '\(request.name)'; leave it out or make them equal")
        }
        settings["name"] = .string(request.name)
        let text: [UInt8]
        do {
            text = Array(try JSONEncoder().encode(JSONValue.object(settings)))
        } catch {
            throw .invalid(field: "config", message: "cannot be encoded as JSON: \(error)")
        }
        let config: VMConfig
        do {
            config = try VMConfig.decode(json: text, source: "config")
        } catch {
            throw .invalid(field: field(naming: error.description, among: settings.keys), message: trimmed(error.description))
        }
        try checkHostPaths(config)
        return VMRecord(name: request.name, config: String(decoding: text, as: UTF8.self),
                        cpuPolicy: request.cpuPolicy ?? .shared, autostart: request.autostart ?? false)
    }

    /// The rule `tern run --name` applies (`VMConfig.isValidName`), less "." and "..", which would name the
    /// directory above a VM's own as its `vms/NAME` directory.
    static func validate(name: String) throws(ToolstackError) {
        guard VMConfig.isValidName(name), name != ".", name != ".." else {
            throw .invalid(field: "name", message: "'\(name)' is not a VM name; use up to 64 letters, digits, '-', '_' and '.'")
        }
    }

    /// ternd runs VMs from its own directory, so relative paths would mean something else than the client meant.
    private static func checkHostPaths(_ config: VMConfig) throws(ToolstackError) {
        var paths: [(field: String, path: String)] = []
        if let kernel = config.kernel { paths.append(("config.kernel", kernel)) }
        if let firmware = config.firmware { paths.append(("config.firmware", firmware.path)) }
        if let initrd = config.initrd { paths.append(("config.initrd", initrd)) }
        for disk in config.disks { paths.append(("config.disks", disk.path)) }
        for (field, path) in paths {
            guard path.hasPrefix("/") else {
                throw .invalid(field: field, message: "'\(path)' is relative; give an absolute path (ternd runs VMs from its state directory)")
            }
            var status = stat()
            guard stat(path, &status) == 0, access(path, R_OK) == 0 else {
                throw .invalid(field: field, message: "\(path): \(String(cString: strerror(errno))); give a readable file")
            }
            let kind = status.st_mode & S_IFMT
            guard kind == S_IFREG || (field == "config.disks" && kind == S_IFBLK) else {
                throw .invalid(field: field, message: "\(path) is not a regular file; give a file")
            }
        }
    }

    /// The setting a `ConfigError` names: the request key it leads with, else the first key-like word it quotes
    /// (`missing required setting 'kernel'`).
    private static func field(naming message: String, among keys: Dictionary<String, JSONValue>.Keys) -> String {
        let body = trimmed(message)
        if let key = keys.sorted().first(where: { body.hasPrefix("\($0):") || body.hasPrefix("\($0) ") }) {
            return "config.\(key)"
        }
        let quoted = body.split(separator: "'", omittingEmptySubsequences: false)
        if quoted.count >= 3, !quoted[1].isEmpty, quoted[1].allSatisfy({ $0.isLowercase || $0 == "_" || $0 == "." }) {
            return "config.\(quoted[1])"
        }
        return "config"
    }

    /// The message without the "config: " that names its source.
    private static func trimmed(_ message: String) -> String {
        message.hasPrefix("config: ") ? String(message.dropFirst(8)) : message
    }
}

import Foundation
import Hummingbird
import Logging

/// What ternd is told on its command line.
public struct DaemonSettings: Sendable {
    /// Holds `ternd.sqlite` and `vms/NAME/` for each VM.
    public var stateDirectory: String
    /// The API's Unix socket (mode 0660).
    public var socketPath: String
    /// A TCP address to serve too, only with `token`.
    public var listen: (host: String, port: Int)?
    /// The bearer token TCP clients must send.
    public var token: [UInt8]?
    /// The `tern` executable that runs each VM.
    public var tern: String

    public init(stateDirectory: String, socketPath: String, listen: (host: String, port: Int)?, token: [UInt8]?, tern: String) {
        self.stateDirectory = stateDirectory
        self.socketPath = socketPath
        self.listen = listen
        self.token = token
        self.tern = tern
    }
}

/// ternd: opens the store, takes back running VMs, then serves the API until its task is cancelled or a server
/// fails. Installs no signal handlers: the executable decides how the process ends (a kill of any kind loses
/// nothing acknowledged, and the VMs run on).
public struct Daemon: Sendable {
    private let settings: DaemonSettings
    private let logger: Logger

    public init(settings: DaemonSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    public func run() async throws(ToolstackError) {
        let document = try Self.openAPIDocument()
        for directory in [settings.stateDirectory, "\(settings.stateDirectory)/vms"] {
            guard mkdir(directory, 0o750) == 0 || errno == EEXIST else {
                throw .failure(message: "--state-dir \(directory): \(String(cString: strerror(errno))); create it or choose another")
            }
        }
        try Self.removeStaleSocket(settings.socketPath)
        let store = try Store(path: "\(settings.stateDirectory)/ternd.sqlite")
        let bus = EventBus()
        let supervisor = try Supervisor(store: store, bus: bus, stateDirectory: settings.stateDirectory, tern: settings.tern, logger: logger)
        let routes = Routes(supervisor: supervisor, store: store, bus: bus, document: document)
        let socketPath = settings.socketPath
        let logger = logger
        let unixApplication = Application(
            router: router(routes, token: nil),
            configuration: ApplicationConfiguration(address: .unixDomainSocket(path: socketPath), serverName: "ternd"),
            onServerRunning: { _ in
                chmod(socketPath, 0o660)
                logger.notice("serving the API", metadata: ["socket": "\(socketPath)"])
            },
            logger: logger)
        var applications = [unixApplication]
        if let listen = settings.listen, let token = settings.token {
            applications.append(Application(
                router: router(routes, token: token),
                configuration: ApplicationConfiguration(address: .hostname(listen.host, port: listen.port), serverName: "ternd"),
                onServerRunning: { channel in
                    logger.notice("serving the API", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
                },
                logger: logger))
        }
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await supervisor.superviseExits() }
                try await supervisor.recover()
                for application in applications {
                    group.addTask { try await application.run() }
                }
                try await group.next()
                group.cancelAll()
            }
        } catch let error as ToolstackError {
            await supervisor.shutdown()
            throw error
        } catch {
            await supervisor.shutdown()
            throw .failure(message: "the API server stopped: \(error)")
        }
        await supervisor.shutdown()
    }

    private func router(_ routes: Routes, token: [UInt8]?) -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: RequestLog(logger: logger))
        if let token { router.add(middleware: BearerAuthentication(token: token)) }
        routes.add(to: router)
        return router
    }

    /// The OpenAPI document shipped beside the binary (SwiftPM's resource bundle for this module).
    static func openAPIDocument() throws(ToolstackError) -> String {
        guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml"),
              let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw .failure(message: "openapi.yaml is missing from ternd's resource bundle; install Tern_Toolstack.resources beside ternd")
        }
        return text
    }

    /// Removes a socket file nobody listens on; refuses a path another ternd serves or a file that is not a socket.
    static func removeStaleSocket(_ path: String) throws(ToolstackError) {
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        guard status.st_mode & S_IFMT == S_IFSOCK else {
            throw .failure(message: "--socket \(path): the file exists and is not a socket; remove it or choose another path")
        }
        switch SocketProbe.probe(path) {
        case .listening:
            throw .failure(message: "--socket \(path): another ternd serves this socket; stop it or choose another path")
        case .refused:
            unlink(path)
        case .failed(let reason):
            throw .failure(message: "--socket \(path): \(reason)")
        }
    }
}

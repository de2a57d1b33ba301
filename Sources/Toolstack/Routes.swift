import FoundationEssentials
import Glibc
import Hummingbird
import ToolstackAPI

/// ternd's REST API, as `openapi.yaml` describes it.
struct Routes: Sendable {
    let supervisor: Supervisor
    let store: Store
    let bus: EventBus
    /// The OpenAPI document, served as it is in the repository.
    let document: String

    /// Longest request body taken.
    static let bodyLimit = 1 << 20
    /// Longest stop grace period a request may ask for, in seconds.
    static let graceLimit = 3600
    static let defaultGrace = 10

    func add(to router: Router<BasicRequestContext>) {
        router.get("/v1/vms") { _, _ in
            await HTTPResponses.respond { () async throws(ToolstackError) in VMList(vms: try await supervisor.list()) }
        }
        router.post("/v1/vms") { request, _ in await create(request) }
        router.get("/v1/vms/{name}") { _, context in
            await withName(context) { name async throws(ToolstackError) in try await supervisor.show(name) }
        }
        router.delete("/v1/vms/{name}") { _, context in
            let name = context.parameters.get("name") ?? ""
            do throws(ToolstackError) {
                try await supervisor.delete(name)
                return Response(status: .noContent)
            } catch {
                return HTTPResponses.error(error)
            }
        }
        router.post("/v1/vms/{name}/start") { _, context in
            await withName(context) { name async throws(ToolstackError) in try await supervisor.start(name) }
        }
        router.post("/v1/vms/{name}/stop") { request, context in
            guard let grace = Self.grace(request) else {
                return HTTPResponses.error("grace must be a whole number of seconds from 0 to \(Self.graceLimit)", field: "grace",
                                           status: .badRequest)
            }
            return await withName(context) { name async throws(ToolstackError) in try await supervisor.stop(name, grace: .seconds(grace)) }
        }
        router.post("/v1/vms/{name}/kill") { _, context in
            await withName(context) { name async throws(ToolstackError) in try await supervisor.kill(name) }
        }
        router.post("/v1/vms/{name}/pause") { _, context in
            await withName(context) { name async throws(ToolstackError) in try await supervisor.setPaused(name, true) }
        }
        router.post("/v1/vms/{name}/resume") { _, context in
            await withName(context) { name async throws(ToolstackError) in try await supervisor.setPaused(name, false) }
        }
        router.get("/v1/host") { _, _ in HTTPResponses.json(Self.host()) }
        router.get("/v1/events") { request, _ in events(request) }
        router.get("/v1/openapi.yaml") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/yaml"], body: ResponseBody(byteBuffer: ByteBuffer(string: document)))
        }
    }

    private func withName(_ context: BasicRequestContext, _ body: (String) async throws(ToolstackError) -> VMInfo) async -> Response {
        let name = context.parameters.get("name") ?? ""
        return await HTTPResponses.respond { () async throws(ToolstackError) in try await body(name) }
    }

    private func create(_ request: Request) async -> Response {
        let bytes: ByteBuffer
        do {
            bytes = try await request.body.collect(upTo: Self.bodyLimit)
        } catch {
            return HTTPResponses.error("the body is larger than \(Self.bodyLimit) bytes", field: "body", status: .contentTooLarge)
        }
        let parsed: CreateVMRequest
        do {
            parsed = try Self.decodeCreate(Data(bytes.readableBytesView))
        } catch {
            return HTTPResponses.error(error)
        }
        return await HTTPResponses.respond(status: .created) { () async throws(ToolstackError) in try await supervisor.create(parsed) }
    }

    /// Decodes a create request, naming the field at fault: unknown keys are refused, not ignored.
    static func decodeCreate(_ data: Data) throws(ToolstackError) -> CreateVMRequest {
        guard let body = try? JSONDecoder().decode(JSONValue.self, from: data), let members = body.objectValue else {
            throw .invalid(field: "body", message: "give a JSON object such as {\"name\": \"vm1\", \"config\": {\"kernel\": \"/path/guest.elf\"}}")
        }
        let known: Set = ["name", "config", "cpu_policy", "autostart"]
        if let unknown = members.keys.sorted().first(where: { !known.contains($0) }) {
            throw .invalid(field: unknown, message: "unknown field; known fields are name, config, cpu_policy and autostart")
        }
        do {
            return try JSONDecoder().decode(CreateVMRequest.self, from: data)
        } catch let DecodingError.keyNotFound(key, _) {
            throw .invalid(field: key.stringValue, message: "missing; it is required")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context),
                let DecodingError.dataCorrupted(context) {
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            let hint = field == "cpu_policy" ? "use shared or exclusive" : "see GET /v1/openapi.yaml"
            throw .invalid(field: field.isEmpty ? "body" : field, message: "has the wrong type or value; \(hint)")
        } catch {
            throw .invalid(field: "body", message: "\(error)")
        }
    }

    /// The `grace` query parameter in seconds (the default when absent), nil when it is not valid.
    private static func grace(_ request: Request) -> Int? {
        guard let text = request.uri.queryParameters.get("grace") else { return defaultGrace }
        guard let seconds = Int(text), (0...graceLimit).contains(seconds) else { return nil }
        return seconds
    }

    /// Server-sent events: the stored events after `Last-Event-ID` (or the `after` query parameter), then every new
    /// one as it happens, each as `id:` and a JSON `data:` line.
    private func events(_ request: Request) -> Response {
        let stream = bus.subscribe()
        let resumeFrom = request.headers.first { $0.name.canonicalName == "last-event-id" }.flatMap { Int64($0.value) }
            ?? request.uri.queryParameters.get("after").flatMap { Int64($0) }
        let store = store
        let body = ResponseBody { writer in
            var last = resumeFrom ?? -1
            // The store answers at most a page of events at a time: read on until it has none left, or a client
            // that resumes from far back would miss every stored event past the first page.
            if resumeFrom != nil {
                while let page = try? store.events(after: last), !page.isEmpty {
                    for event in page {
                        try await writer.write(Self.frame(event))
                        last = event.id
                    }
                }
            }
            for await event in stream where event.id > last {
                try await writer.write(Self.frame(event))
                last = event.id
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }

    private static func frame(_ event: VMEvent) -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json = (try? encoder.encode(event)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return ByteBuffer(string: "id: \(event.id)\nevent: \(event.kind)\ndata: \(json)\n\n")
    }

    /// The host's online cores and physical memory.
    static func host() -> HostInfo {
        HostInfo(cores: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))),
                 memoryBytes: UInt64(sysconf(Int32(_SC_PHYS_PAGES))) * UInt64(sysconf(Int32(_SC_PAGESIZE))))
    }
}

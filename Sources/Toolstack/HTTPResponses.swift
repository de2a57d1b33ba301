import FoundationEssentials
import Hummingbird
import ToolstackAPI

/// JSON responses: values, and errors as `APIError` bodies.
enum HTTPResponses {
    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let bytes = (try? encoder.encode(value)) ?? Data(#"{"error":"the answer could not be encoded"}"#.utf8)
        return Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    static func error(_ error: ToolstackError) -> Response {
        json(error.body, status: HTTPResponse.Status(code: error.statusCode))
    }

    static func error(_ message: String, field: String? = nil, status: HTTPResponse.Status) -> Response {
        json(APIError(message, field: field), status: status)
    }

    /// Runs `body` and answers its value, or its error.
    static func respond<Value: Encodable>(status: HTTPResponse.Status = .ok, _ body: () async throws(ToolstackError) -> Value) async -> Response {
        do {
            return json(try await body(), status: status)
        } catch {
            return self.error(error)
        }
    }
}

import Hummingbird
import Logging

/// Logs every request with its outcome (status and time taken), and turns what a handler or the router threw
/// (an unknown route, a body too large) into a JSON error answer, so that no client ever gets an empty error page.
struct RequestLog<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        let response: Response
        do {
            response = try await next(request, context)
        } catch let error as HTTPError {
            response = HTTPResponses.error(error.body ?? Self.message(for: error.status, request), status: error.status)
        } catch {
            response = HTTPResponses.error("internal error: \(error)", status: .internalServerError)
        }
        let elapsed = ContinuousClock.now - start
        let metadata: Logger.Metadata = ["method": "\(request.method)", "path": "\(request.uri.path)",
                                         "status": "\(response.status.code)", "duration": "\(elapsed)"]
        if response.status.code >= 500 {
            logger.error("request failed", metadata: metadata)
        } else {
            logger.info("request", metadata: metadata)
        }
        return response
    }

    private static func message(for status: HTTPResponse.Status, _ request: Request) -> String {
        switch status {
        case .notFound: "no route for \(request.method) \(request.uri.path); GET /v1/openapi.yaml lists the routes"
        case .methodNotAllowed: "\(request.method) is not allowed on \(request.uri.path); GET /v1/openapi.yaml lists the routes"
        case .contentTooLarge: "the request body is too large"
        default: status.reasonPhrase
        }
    }
}

/// Admits only requests carrying `Authorization: Bearer TOKEN` with the configured token, compared in constant time.
struct BearerAuthentication<Context: RequestContext>: RouterMiddleware {
    let token: [UInt8]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let prefix = "Bearer "
        guard let header = request.headers[.authorization], header.hasPrefix(prefix),
              Self.constantTimeEqual(Array(header.utf8.dropFirst(prefix.utf8.count)), token)
        else {
            var response = HTTPResponses.error("missing or wrong bearer token; send Authorization: Bearer TOKEN (ternd --token-file)",
                                               field: "Authorization", status: .unauthorized)
            response.headers[.wwwAuthenticate] = "Bearer"
            return response
        }
        return try await next(request, context)
    }

    /// Equal bytes, in a time that depends only on the lengths.
    static func constantTimeEqual(_ given: [UInt8], _ expected: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: given.count ^ expected.count) | (given.count == expected.count ? 0 : 1)
        for index in expected.indices {
            difference |= expected[index] ^ (index < given.count ? given[index] : 0)
        }
        return difference == 0
    }
}

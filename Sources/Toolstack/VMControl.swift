import Dispatch
import VMM

/// Asynchronous access to a VM's control socket. `ControlClient` blocks for up to five seconds, so each request runs
/// on a Dispatch worker rather than on a Swift concurrency thread.
enum VMControl {
    static func send(_ command: String, to socket: String) async -> Result<ControlResponse, ControlClientError> {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(returning: ControlClient.send(ControlRequest(command: command), to: socket))
            }
        }
    }
}

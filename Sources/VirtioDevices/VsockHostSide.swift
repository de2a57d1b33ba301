import Glibc
import Virtio

/// The host sockets: readiness events, accepting host connections, and the connection life cycle.
extension Vsock {
    /// Host sockets are only served while the device runs: before activation host connections wait in the
    /// listener's backlog, and a reset closed every connection.
    public mutating func hostEvent(token: UInt32, events: HostEventKind) {
        guard interrupt != nil else { return }
        if token == VsockConnectionTable.listenerToken {
            acceptHostConnections()
        } else if let slot = connections.slot(token: token) {
            socketEvent(slot, events)
        }
        run()
    }

    /// Most host connections that may wait for their `CONNECT` line at once: clients that connect and say nothing
    /// cannot take the slots guest connections need.
    public static let maximumUnannouncedConnections = 16

    /// Accepts every waiting host connection; those beyond the connection limit, or beyond
    /// `maximumUnannouncedConnections` still waiting for their request, are closed at once.
    mutating func acceptHostConnections() {
        while let socket = backend.accept() {
            let unannounced = connections.slotNumbers.reduce(0) { count, slot in
                connections.isOccupied(slot) && connections[slot].state == .awaitingRequest ? count + 1 : count
            }
            guard unannounced < Self.maximumUnannouncedConnections else {
                close(socket)
                continue
            }
            let connection = VsockConnection(
                socket: socket, state: .awaitingRequest, key: VsockConnectionKey(hostPort: 0, guestPort: 0),
                bufferSize: bufferSize)
            guard let slot = connections.insert(connection) else {
                close(socket)
                continue
            }
            do {
                try watcher.watch(socket, token: connections.token(slot))
            } catch {
                close(socket)
                connections.remove(slot)
                continue
            }
            readConnectRequest(slot, hangup: false)
        }
    }

    private mutating func socketEvent(_ slot: Int, _ events: HostEventKind) {
        switch connections[slot].state {
        case .awaitingRequest:
            readConnectRequest(slot, hangup: events.contains(.hangup))
        case .closing:
            return
        case .connecting, .established:
            if !events.isDisjoint(with: [.readable, .hangup]) {
                connections[slot].hostReadable = true
                connections.list(slot)
            }
            if !events.isDisjoint(with: [.writable, .hangup]) { flushToHost(slot) }
        }
    }

    /// Reads the request of a host connection; once it names a guest port, a REQUEST goes to the guest.
    private mutating func readConnectRequest(_ slot: Int, hangup: Bool) {
        switch backend.readConnectRequest(connections[slot].socket) {
        case .incomplete:
            if hangup { closeConnection(slot) }
        case .invalid:
            closeConnection(slot)
        case .port(let guestPort):
            connections.assign(VsockConnectionKey(hostPort: localPort(for: guestPort), guestPort: guestPort), to: slot)
            connections[slot].state = .connecting
            connections[slot].pending = .request
            connections.list(slot)
        }
    }

    /// A host port for a new connection to `guestPort` that no open connection uses.
    private mutating func localPort(for guestPort: UInt32) -> UInt32 {
        while true {
            let port = nextLocalPort
            nextLocalPort = nextLocalPort == UInt32.max ? Self.firstLocalPort : nextLocalPort + 1
            if connections.slot(VsockConnectionKey(hostPort: port, guestPort: guestPort)) == nil { return port }
        }
    }

    /// Writes held guest bytes to the host socket until it would block or the ring is empty.
    mutating func flushToHost(_ slot: Int) {
        while connections[slot].state != .closing, !connections[slot].toHost.isEmpty {
            switch connections[slot].toHost.writeOut(to: connections[slot].socket) {
            case .transferred(let count) where count > 0: noteForwarded(slot, UInt32(count))
            case .transferred, .wouldBlock, .endOfStream: return
            case .failed: return resetConnection(slot)
            }
        }
    }

    /// Counts `count` more bytes handed to the host socket; tells the guest once a quarter of its window freed up.
    mutating func noteForwarded(_ slot: Int, _ count: UInt32) {
        connections[slot].forwarded &+= count
        let unadvertised = connections[slot].forwarded &- connections[slot].advertisedForwarded
        if unadvertised >= bufferSize / 4 && unadvertised > 0 {
            connections[slot].pending.insert(.creditUpdate)
            connections.list(slot)
        }
        if connections[slot].toHost.isEmpty { settleShutdown(slot) }
    }

    /// Carries out the guest's SHUTDOWN once every byte it sent is with the host: shuts the host socket's sending
    /// side for SEND, and for both directions (a guest close) closes the connection with the RST the guest awaits.
    mutating func settleShutdown(_ slot: Int) {
        let shutdownFlags = connections[slot].guestShutdown
        guard shutdownFlags != 0, connections[slot].state == .established, connections[slot].toHost.isEmpty else {
            return
        }
        if shutdownFlags == VsockHeader.ShutdownFlag.both { return resetConnection(slot) }
        if shutdownFlags & VsockHeader.ShutdownFlag.send != 0, !connections[slot].hostWriteClosed {
            shutdown(connections[slot].socket, Int32(SHUT_WR))
            connections[slot].hostWriteClosed = true
        }
    }

    /// Closes the connection's host socket and owes the guest an RST; a connection the guest never heard of is
    /// simply closed.
    mutating func resetConnection(_ slot: Int) {
        let connection = connections[slot]
        guard connection.state != .closing else { return }
        guard connection.state != .awaitingRequest, !connection.pending.contains(.request) else {
            return closeConnection(slot)
        }
        closeSocket(slot)
        connections[slot].state = .closing
        connections[slot].pending = .reset
        connections.list(slot)
    }

    /// Closes the connection and frees its slot without telling the guest.
    mutating func closeConnection(_ slot: Int) {
        closeSocket(slot)
        connections.remove(slot)
    }
}

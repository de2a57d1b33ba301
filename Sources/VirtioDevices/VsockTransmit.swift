import Glibc
import Virtio

/// Guest to host: packets from the transmit queue.
extension Vsock {
    /// Takes packets from the transmit queue, at most a queue's worth; returns true when it stopped because RST
    /// replies wait for receive buffers (so that no reply is ever dropped).
    mutating func processTransmitQueue() -> Bool {
        guard var queue = transmitq, let interrupt else { return false }
        var budget = Int(queue.size)
        queue.disableNotifications()
        var pending = false
        do {
            repeat {
                while budget > 0, !resetReplies.isFull, try queue.nextChain(into: &transmitChain) {
                    budget -= 1
                    guard let header = transmitHeader() else { return false }
                    handle(header)
                    guard self.interrupt != nil else { return false }
                    queue.addUsed(head: transmitChain.head, length: 0)
                }
                if queue.needsNotification() { interrupt.signalUsedBuffers(queue: Self.transmitQueue) }
                pending = queue.enableNotifications()
            } while pending && budget > 0 && !resetReplies.isFull
        } catch {
            fail("transmit queue: \(error)")
            return false
        }
        transmitq = queue
        // Stopped at the budget with packets left: the driver published them already and will not notify again.
        if pending && budget == 0 && !resetReplies.isFull { interrupt.requestService(queue: Self.transmitQueue) }
        return resetReplies.isFull
    }

    /// The header of the packet in `transmitChain` once the chain's layout is checked; nil after failing the device.
    private mutating func transmitHeader() -> VsockHeader? {
        let chain = transmitChain
        guard chain.readableCount == chain.count else {
            fail("transmit chain \(chain.head) has device-writable buffers")
            return nil
        }
        guard chain.readableLength >= UInt64(VsockHeader.size) else {
            fail("transmit chain \(chain.head) holds \(chain.readableLength) bytes, below the 44-byte header")
            return nil
        }
        let header = withUnsafeTemporaryAllocation(byteCount: VsockHeader.size, alignment: 8) { bytes -> VsockHeader? in
            let whole = VsockSocketIO.gather(into: bytes, from: memory, chain, segments: 0..<chain.count, skip: 0)
            return whole ? VsockHeader(decoding: UnsafeRawBufferPointer(bytes)) : nil
        }
        guard let header else {
            fail("transmit chain \(chain.head) has a buffer outside guest RAM")
            return nil
        }
        let payload = chain.readableLength - UInt64(VsockHeader.size)
        guard UInt64(header.length) <= payload else {
            fail("transmit chain \(chain.head): len \(header.length) exceeds the \(payload) payload bytes of the chain")
            return nil
        }
        return header
    }

    /// Acts on one well-formed guest packet. Protocol mistakes reset the connection they concern (or, with no
    /// connection, are answered with RST); they never fail the device.
    private mutating func handle(_ header: VsockHeader) {
        guard header.sourceCID == UInt64(guestCID), header.destinationCID == Self.hostCID else {
            return replyReset(to: header)
        }
        let key = VsockConnectionKey(hostPort: header.destinationPort, guestPort: header.sourcePort)
        guard let slot = connections.slot(key) else {
            if header.operation == VsockHeader.Operation.request, header.type == VsockHeader.SocketType.stream {
                openGuestConnection(header, key)
            } else {
                replyReset(to: header)
            }
            return
        }
        if header.operation == VsockHeader.Operation.reset { return closeConnection(slot) }
        // The RST for this connection is on its way; the guest's packets until then change nothing.
        guard connections[slot].state != .closing else { return }
        guard header.type == VsockHeader.SocketType.stream else { return resetConnection(slot) }
        let state = connections[slot].state
        let isOpen = state == .established && !connections[slot].pending.contains(.response)
        switch header.operation {
        case VsockHeader.Operation.response:
            guard state == .connecting, !connections[slot].pending.contains(.request) else {
                return resetConnection(slot)
            }
            connections[slot].updatePeerCredit(header)
            guard backend.confirm(connections[slot].socket, hostPort: key.hostPort) else {
                return resetConnection(slot)
            }
            connections[slot].state = .established
            connections[slot].hostReadable = true
            connections.list(slot)
        case VsockHeader.Operation.readWrite:
            guard isOpen, connections[slot].guestShutdown & VsockHeader.ShutdownFlag.send == 0 else {
                return resetConnection(slot)
            }
            connections[slot].updatePeerCredit(header)
            // The guest may have no more in flight than the buffer advertised; the bytes it still has credit for are
            // exactly the room left in the connection's ring.
            guard UInt64(connections[slot].toHost.count) + UInt64(header.length) <= UInt64(bufferSize) else {
                return resetConnection(slot)
            }
            forwardToHost(slot, length: header.length)
        case VsockHeader.Operation.shutdown:
            guard isOpen else { return resetConnection(slot) }
            connections[slot].updatePeerCredit(header)
            connections[slot].guestShutdown |= header.flags & VsockHeader.ShutdownFlag.both
            settleShutdown(slot)
        case VsockHeader.Operation.creditUpdate, VsockHeader.Operation.creditRequest:
            guard isOpen else { return resetConnection(slot) }
            connections[slot].updatePeerCredit(header)
            if header.operation == VsockHeader.Operation.creditRequest {
                connections[slot].pending.insert(.creditUpdate)
            }
            if connections[slot].hasPacketForGuest { connections.list(slot) }
        default:
            // A second REQUEST for an open connection, or an unknown op.
            resetConnection(slot)
        }
    }

    /// Connects a guest REQUEST to the host service for its port, or refuses it with RST.
    private mutating func openGuestConnection(_ header: VsockHeader, _ key: VsockConnectionKey) {
        guard !connections.isFull, let socket = backend.connect(port: key.hostPort) else {
            return replyReset(to: header)
        }
        var connection = VsockConnection(socket: socket, state: .established, key: key, bufferSize: bufferSize)
        connection.updatePeerCredit(header)
        connection.pending = .response
        // The service may have written already; the first read finds out.
        connection.hostReadable = true
        guard let slot = connections.insert(connection) else {
            close(socket)
            return replyReset(to: header)
        }
        do {
            try watcher.watch(socket, token: connections.token(slot))
        } catch {
            close(socket)
            connections.remove(slot)
            return replyReset(to: header)
        }
        connections.list(slot)
    }

    /// Writes the packet's payload to the host socket; what the socket does not take now waits in the ring.
    private mutating func forwardToHost(_ slot: Int, length: UInt32) {
        guard length > 0 else { return }
        let chain = transmitChain
        let segments = 0..<chain.count
        let headerSize = UInt64(VsockHeader.size)
        var written: UInt64 = 0
        if connections[slot].toHost.isEmpty {
            let socket = connections[slot].socket
            let outcome = VsockSocketIO.withVectors(
                memory, chain, segments: segments, skip: headerSize, limit: UInt64(length)
            ) { vectors, _ in VsockSocketIO.write(socket, vectors) }
            switch outcome {
            case .transferred(let count)?: written = UInt64(count)
            case .wouldBlock?, .endOfStream?: break
            case .failed?: return resetConnection(slot)
            case nil: return fail("transmit chain \(chain.head) has a buffer outside guest RAM")
            }
        }
        if written < UInt64(length) {
            let copied: Void? = VsockSocketIO.withVectors(
                memory, chain, segments: segments, skip: headerSize + written, limit: UInt64(length) - written
            ) { vectors, _ in
                for vector in vectors {
                    let bytes = UnsafeRawBufferPointer(start: vector.iov_base, count: vector.iov_len)
                    connections[slot].toHost.append(bytes)
                }
            }
            guard copied != nil else { return fail("transmit chain \(chain.head) has a buffer outside guest RAM") }
        }
        noteForwarded(slot, UInt32(written))
    }

    /// Queues an RST answering `header`, unless it is an RST itself. The caller made sure the ring has room.
    private mutating func replyReset(to header: VsockHeader) {
        guard header.operation != VsockHeader.Operation.reset else { return }
        let reply = VsockResetReplies.Reply(
            sourceCID: header.destinationCID, sourcePort: header.destinationPort, destinationPort: header.sourcePort)
        resetReplies.append(reply)
    }
}

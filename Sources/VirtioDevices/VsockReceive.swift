import Virtio

/// Host to guest: packets into the receive queue.
extension Vsock {
    /// Fills receive buffers with what is owed to the guest, RST replies first, then connections round-robin,
    /// until the driver has no buffer left or nothing is owed.
    mutating func fillReceiveQueue() {
        guard var queue = receiveq, let interrupt else { return }
        while true {
            let slot: Int?
            if !resetReplies.isEmpty {
                slot = nil
            } else if let first = connections.firstListed {
                guard hasPacket(first) else {
                    connections.unlist(first)
                    continue
                }
                slot = first
            } else {
                break
            }
            if !holdsReceiveChain {
                do {
                    // Out of buffers: ask for a notification when the driver adds some (with EVENT_IDX its
                    // kick is suppressed otherwise), and take any that arrived meanwhile.
                    guard try queue.nextChain(into: &receiveChain)
                        || (queue.enableNotifications() && queue.nextChain(into: &receiveChain))
                    else { break }
                } catch {
                    return fail("receive queue: \(error)")
                }
                let chain = receiveChain
                guard chain.readableCount == 0, chain.writableLength > UInt64(VsockHeader.size) else {
                    return fail("receive chain \(chain.head) is not device-writable room for a header and payload")
                }
                holdsReceiveChain = true
            }
            let length: UInt32?
            if let slot {
                length = writePacket(slot)
                if connections.isOccupied(slot) { connections.relist(slot) }
            } else {
                length = writeResetReply()
            }
            guard self.interrupt != nil else { return }
            if let length {
                queue.addUsed(head: receiveChain.head, length: UInt32(VsockHeader.size) + length)
                holdsReceiveChain = false
            }
        }
        if queue.needsNotification() { interrupt.signalUsedBuffers(queue: Self.receiveQueue) }
        receiveq = queue
    }

    /// Whether the connection in `slot` has a packet for the guest; asks the guest for credit (once) when it has
    /// data but no credit.
    private mutating func hasPacket(_ slot: Int) -> Bool {
        if connections[slot].hasPacketForGuest { return true }
        guard connections[slot].wantsToSendData, !connections[slot].creditRequested else { return false }
        connections[slot].creditRequested = true
        connections[slot].pending.insert(.creditRequest)
        return true
    }

    /// Writes the first RST reply into the held receive chain; returns its payload length (zero).
    private mutating func writeResetReply() -> UInt32? {
        guard let reply = resetReplies.first else { return nil }
        resetReplies.removeFirst()
        let header = VsockHeader(
            sourceCID: reply.sourceCID, destinationCID: UInt64(guestCID), sourcePort: reply.sourcePort,
            destinationPort: reply.destinationPort, operation: VsockHeader.Operation.reset)
        return writeHeader(header) ? 0 : nil
    }

    /// Writes the next packet of the connection in `slot` into the held receive chain; returns its payload length,
    /// or nil when nothing was written (the host socket had no data after all, or ended).
    private mutating func writePacket(_ slot: Int) -> UInt32? {
        let connection = connections[slot]
        var header = VsockHeader(
            sourceCID: Self.hostCID, destinationCID: UInt64(guestCID), sourcePort: connection.key.hostPort,
            destinationPort: connection.key.guestPort, operation: 0, bufferAllocation: bufferSize,
            forwardCount: connection.forwarded)
        var sent: VsockConnection.Pending = []
        if connection.pending.contains(.reset) {
            header.operation = VsockHeader.Operation.reset
            sent = .reset
        } else if connection.pending.contains(.request) {
            header.operation = VsockHeader.Operation.request
            sent = .request
        } else if connection.pending.contains(.response) {
            header.operation = VsockHeader.Operation.response
            sent = .response
        } else if connection.wantsToSendData, connection.peerCredit > 0 {
            guard let length = readHostData(slot) else { return nil }
            header.operation = VsockHeader.Operation.readWrite
            header.length = length
        } else if connection.pending.contains(.shutdown) {
            header.operation = VsockHeader.Operation.shutdown
            header.flags = VsockHeader.ShutdownFlag.send
            sent = .shutdown
        } else if connection.pending.contains(.creditUpdate) {
            header.operation = VsockHeader.Operation.creditUpdate
        } else if connection.pending.contains(.creditRequest) {
            header.operation = VsockHeader.Operation.creditRequest
            sent = .creditRequest
        } else {
            return nil
        }
        guard writeHeader(header) else { return nil }
        if sent == .reset {
            connections.remove(slot)
        } else {
            // Every packet carries the device's credit.
            connections[slot].pending.subtract(sent.union(.creditUpdate))
            connections[slot].advertisedForwarded = connection.forwarded
        }
        return header.length
    }

    /// Reads host bytes into the held receive chain's payload room, up to the guest's credit; returns the count,
    /// or nil when the socket had nothing (it is then marked drained) or ended (SHUTDOWN is then owed).
    private mutating func readHostData(_ slot: Int) -> UInt32? {
        let chain = receiveChain
        let room = chain.writableLength - UInt64(VsockHeader.size)
        let limit = min(room, UInt64(connections[slot].peerCredit), UInt64(Self.maximumPacketPayload))
        let socket = connections[slot].socket
        let outcome = VsockSocketIO.withVectors(
            memory, chain, segments: 0..<chain.count, skip: UInt64(VsockHeader.size), limit: limit
        ) { vectors, _ in VsockSocketIO.read(socket, vectors) }
        switch outcome {
        case .transferred(let count)?:
            connections[slot].sent &+= UInt32(count)
            return UInt32(count)
        case .wouldBlock?:
            connections[slot].hostReadable = false
        case .endOfStream?:
            connections[slot].hostEnded = true
            connections[slot].pending.insert(.shutdown)
        case .failed?:
            resetConnection(slot)
        case nil:
            fail("receive chain \(chain.head) has a buffer outside guest RAM")
        }
        return nil
    }

    /// Writes `header` at the start of the held receive chain; false after failing the device.
    private mutating func writeHeader(_ header: VsockHeader) -> Bool {
        let chain = receiveChain
        let written = withUnsafeTemporaryAllocation(byteCount: VsockHeader.size, alignment: 8) { bytes in
            header.encode(into: bytes)
            return VsockSocketIO.scatter(
                UnsafeRawBufferPointer(bytes), into: memory, chain, segments: 0..<chain.count, skip: 0)
        }
        if !written { fail("receive chain \(chain.head) has a buffer outside guest RAM") }
        return written
    }
}

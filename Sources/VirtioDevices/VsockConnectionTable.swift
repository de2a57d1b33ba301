/// The device's connections: a fixed number of slots, an index by ports, and a first-in-first-out list of the
/// connections that have something for the guest (each at most once), served round-robin.
///
/// Everything is sized at creation; opening, closing and scheduling connections allocates nothing. A slot's host
/// descriptor is watched with a token naming the slot and its generation, so readiness reported for a closed
/// connection never reaches the slot's next occupant.
struct VsockConnectionTable {
    /// Token of the backend's listening socket; connection tokens are never zero.
    static let listenerToken: UInt32 = 0
    /// Most slots a table may have: a slot number fills the low 16 bits of a token.
    static let maximumCapacity = 0xFFFF

    private var slots: [VsockConnection?]
    private var generations: [UInt16]
    private var freeSlots: [Int]
    private var index: [VsockConnectionKey: Int]
    /// The service list, linked through the slots; -1 ends it.
    private var next: [Int]
    private var previous: [Int]
    private var listed: [Bool]
    private var listHead = -1
    private var listTail = -1

    init(capacity: Int) {
        precondition(capacity > 0 && capacity <= Self.maximumCapacity, "table capacity \(capacity) is out of range")
        slots = Array(repeating: nil, count: capacity)
        generations = Array(repeating: 0, count: capacity)
        freeSlots = Array((0..<capacity).reversed())
        index = [:]
        index.reserveCapacity(capacity)
        next = Array(repeating: -1, count: capacity)
        previous = Array(repeating: -1, count: capacity)
        listed = Array(repeating: false, count: capacity)
    }

    var isFull: Bool { freeSlots.isEmpty }
    /// Occupied slots.
    var count: Int { slots.count - freeSlots.count }
    /// Every slot number, occupied or not.
    var slotNumbers: Range<Int> { slots.indices }

    subscript(slot: Int) -> VsockConnection {
        get { slots[slot]! }
        _modify { yield &slots[slot]! }
    }

    func isOccupied(_ slot: Int) -> Bool { slots[slot] != nil }

    /// The token watching slot `slot`'s descriptor.
    func token(_ slot: Int) -> UInt32 { UInt32(generations[slot]) << 16 | UInt32(slot + 1) }

    /// The occupied slot a token names, if it is still current.
    func slot(token: UInt32) -> Int? {
        let slot = Int(token & 0xFFFF) - 1
        guard slot >= 0, slot < slots.count, slots[slot] != nil, UInt16(token >> 16) == generations[slot] else {
            return nil
        }
        return slot
    }

    /// The slot of the connection with `key`.
    func slot(_ key: VsockConnectionKey) -> Int? { index[key] }

    /// Puts `connection` in a free slot, indexed by its key unless it is still awaiting its request; nil when full.
    mutating func insert(_ connection: VsockConnection) -> Int? {
        guard let slot = freeSlots.popLast() else { return nil }
        slots[slot] = connection
        if connection.state != .awaitingRequest { index[connection.key] = slot }
        return slot
    }

    /// Gives the connection in `slot`, which had no key yet, the key `key`.
    mutating func assign(_ key: VsockConnectionKey, to slot: Int) {
        slots[slot]!.key = key
        index[key] = slot
    }

    /// Empties `slot`, unlisting and unindexing its connection, and returns that connection.
    @discardableResult
    mutating func remove(_ slot: Int) -> VsockConnection {
        let connection = slots[slot]!
        unlist(slot)
        if connection.state != .awaitingRequest, index[connection.key] == slot { index[connection.key] = nil }
        slots[slot] = nil
        generations[slot] &+= 1
        freeSlots.append(slot)
        return connection
    }

    /// The first listed slot.
    var firstListed: Int? { listHead >= 0 ? listHead : nil }

    /// Adds `slot` to the end of the service list unless it is listed already.
    mutating func list(_ slot: Int) {
        guard !listed[slot] else { return }
        listed[slot] = true
        next[slot] = -1
        previous[slot] = listTail
        if listTail >= 0 { next[listTail] = slot } else { listHead = slot }
        listTail = slot
    }

    /// Takes `slot` off the service list if it is on it.
    mutating func unlist(_ slot: Int) {
        guard listed[slot] else { return }
        listed[slot] = false
        if previous[slot] >= 0 { next[previous[slot]] = next[slot] } else { listHead = next[slot] }
        if next[slot] >= 0 { previous[next[slot]] = previous[slot] } else { listTail = previous[slot] }
    }

    /// Moves `slot` to the end of the service list (after it was served, so others go first).
    mutating func relist(_ slot: Int) {
        unlist(slot)
        list(slot)
    }
}

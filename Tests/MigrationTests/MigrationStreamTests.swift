import Glibc
import Migration
import TestSupport
import Testing

/// Page-aligned anonymous memory standing in for a region of guest RAM.
private final class Region: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    let size: Int

    init(pages: Int) {
        size = pages * 4096
        pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
    }

    deinit { munmap(pointer, size) }

    var migration: MigrationRegion { MigrationRegion(guestAddress: 0, size: UInt64(size), host: pointer) }

    func fill(page: Int, seed: UInt64) {
        var random = SplitMix64(state: seed)
        let words = pointer.advanced(by: page * 4096).assumingMemoryBound(to: UInt64.self)
        for index in 0..<512 { words[index] = random.next() }
    }

    func bytes(page: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(start: pointer.advanced(by: page * 4096), count: 4096)) }
}

/// Two connected channels over a Unix socket pair.
private func channelPair() -> (MigrationChannel, MigrationChannel) {
    var descriptors: [Int32] = [0, 0]
    precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &descriptors) == 0)
    return (MigrationChannel(descriptor: descriptors[0], timeoutMilliseconds: 2000),
            MigrationChannel(descriptor: descriptors[1], timeoutMilliseconds: 2000))
}

/// Runs `body` on a thread of its own and returns a way to wait for it.
private func background(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box: @unchecked Sendable { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    precondition(pthread_create(&thread, nil, { Unmanaged<Box>.fromOpaque($0!).takeRetainedValue().body(); return nil }, box) == 0)
    return thread
}

@Suite(.timeLimit(.minutes(1))) struct MigrationStreamTests {
    @Test func addressesParseAndPrintBack() throws {
        #expect(try MigrationAddress(parsing: "tcp:10.0.0.1:4444") == .tcp(host: "10.0.0.1", port: 4444))
        #expect(try MigrationAddress(parsing: "tcp::4444") == .tcp(host: "", port: 4444))
        #expect(try MigrationAddress(parsing: "tcp:[::1]:80") == .tcp(host: "::1", port: 80))
        #expect(try MigrationAddress(parsing: "tcp:[::1]:80").description == "tcp:[::1]:80")
        #expect(try MigrationAddress(parsing: "unix:/run/m.sock") == .unix(path: "/run/m.sock"))
        for bad in ["", "tcp:host", "tcp:host:0", "tcp:host:70000", "udp:h:1", "unix:", "tcp:[::1:80", "/path"] {
            #expect(throws: MigrationError.badAddress(bad)) { try MigrationAddress(parsing: bad) }
        }
        #expect(MigrationError.badAddress("x").description == "'x' is not a migration address; write tcp:HOST:PORT or unix:PATH")
    }

    @Test func helloRoundTripsAndRefusesAnotherVersionOrBadLayouts() throws {
        let hello = MigrationHello(configuration: Array(#"{"cpus":2}"#.utf8), regions: [(0, 3 << 30), (1 << 32, 1 << 30)])
        #expect(try MigrationHello(decoding: hello.encoded()) == hello)
        var other = hello
        other.version = 9
        #expect(throws: MigrationError.versionMismatch(local: 1, remote: 9)) { try MigrationHello(decoding: other.encoded()) }
        let badLayouts: [[(guestAddress: UInt64, size: UInt64)]] = [
            [(0, 4095)], [(4096, 0)], [(8192, 4096), (0, 4096)], [(UInt64.max - 4095, 8192)],
        ]
        for regions in badLayouts {
            #expect(throws: MigrationError.self) { try MigrationHello(decoding: MigrationHello(configuration: [], regions: regions).encoded()) }
        }
        let encoded = hello.encoded()
        for length in [0, 3, 8, encoded.count - 1] {
            #expect(throws: MigrationError.self) { try MigrationHello(decoding: Array(encoded.prefix(length))) }
        }
    }

    @Test func pagesTravelWithZeroPagesAsBits() throws {
        let source = Region(pages: 64)
        let destination = Region(pages: 64)
        for page in [1, 2, 40, 63] { source.fill(page: page, seed: UInt64(page)) }
        // The destination held data where the source now has a zero page: it must be cleared.
        destination.fill(page: 5, seed: 99)
        let (sender, receiver) = channelPair()
        let pages: [UInt64] = [1, 2, 5, 40, 63]
        let thread = background {
            _ = try? pages.withUnsafeBufferPointer { try sender.sendPages(regionIndex: 0, region: source.migration, pages: $0) }
            try? sender.send(.endOfRound, [1, 0, 0, 0])
        }
        let header = try receiver.receiveHeader()
        #expect(header.kind == .pages)
        #expect(header.length == PageBatch.payloadLength(count: 5, zeroPages: 1))
        let received = try receiver.receivePages(length: header.length, into: [destination.migration])
        #expect(received.pages == 5 && received.zero == 1)
        for page in [1, 2, 40, 63] { #expect(destination.bytes(page: page) == source.bytes(page: page), "page \(page)") }
        #expect(destination.bytes(page: 5) == [UInt8](repeating: 0, count: 4096))
        let end = try receiver.receiveHeader()
        #expect(end.kind == .endOfRound)
        #expect(try receiver.receivePayload(length: end.length) == [1, 0, 0, 0])
        pthread_join(thread, nil)
        #expect(sender.bytesSent == receiver.bytesReceived)
    }

    @Test func hostileBatchesWriteNothingOutsideTheRegion() throws {
        let destination = Region(pages: 4)
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 + 9 * PageBatch.maximumPages, alignment: 8)
        defer { scratch.deallocate() }
        func batch(region: UInt32 = 0, pages: [UInt64], zeroBits: UInt8 = 0, dataPages: Int) -> [UInt8] {
            var bytes: [UInt8] = []
            withUnsafeBytes(of: region.littleEndian) { bytes += $0 }
            withUnsafeBytes(of: UInt32(pages.count).littleEndian) { bytes += $0 }
            for page in pages { withUnsafeBytes(of: page.littleEndian) { bytes += $0 } }
            bytes.append(zeroBits)
            return bytes + [UInt8](repeating: 0xAB, count: dataPages * 4096)
        }
        let cases: [(String, [UInt8], Int?)] = [
            ("page past the region", batch(pages: [4], dataPages: 1), nil),
            ("region that does not exist", batch(region: 1, pages: [0], dataPages: 1), nil),
            ("indices out of order", batch(pages: [2, 1], dataPages: 2), nil),
            ("repeated index", batch(pages: [1, 1], dataPages: 2), nil),
            ("length that does not match", batch(pages: [0], dataPages: 1), 8 + 8 + 1 + 4095),
            ("stray bitmap bits", batch(pages: [0], zeroBits: 0b10, dataPages: 1), nil),
            ("truncated data", Array(batch(pages: [0, 1], dataPages: 2).dropLast(10)), 8 + 16 + 1 + 8192),
        ]
        for (name, bytes, announced) in cases {
            var source = MemoryByteSource(bytes)
            #expect(throws: MigrationError.self, "\(name)") {
                try PageBatch.receive(length: announced ?? bytes.count, from: &source, into: [destination.migration], scratch: scratch)
            }
        }
        // Only the truncated case reached the data, and it wrote only inside page 0 and 1.
        #expect(destination.bytes(page: 2) == [UInt8](repeating: 0, count: 4096))
        #expect(destination.bytes(page: 3) == [UInt8](repeating: 0, count: 4096))
        var header = [UInt8](repeating: 0, count: 8)
        header[0] = 99
        #expect(throws: MigrationError.protocolViolation("unknown frame kind 99")) { try header.withUnsafeBytes { try FrameHeader(decoding: $0) } }
        header = [3, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]
        #expect(throws: MigrationError.self) { try header.withUnsafeBytes { try FrameHeader(decoding: $0) } }
    }

    @Test func aSilentOrVanishedPeerIsReportedNotWaitedFor() throws {
        let (sender, receiver) = channelPair()
        #expect(throws: MigrationError.timedOut("receiving")) { try receiver.receiveHeader() }
        _ = sender
        let (left, right) = channelPair()
        shutdown(right.descriptor, Int32(SHUT_RDWR))
        #expect(throws: MigrationError.peerClosed) { try left.receiveHeader() }
    }

    @Test func aListenerAcceptsOneSourceOverTCPAndUnix() throws {
        let path = "/tmp/tern-migration-test-\(getpid()).sock"
        for address in [MigrationAddress.unix(path: path), .tcp(host: "127.0.0.1", port: UInt16(20000 + getpid() % 20000))] {
            let listener = try MigrationListener(address)
            let thread = background {
                if let channel = try? MigrationChannel.connect(to: address, timeoutMilliseconds: 2000) {
                    try? channel.send(.hello, MigrationHello(configuration: [1], regions: [(0, 4096)]).encoded())
                }
            }
            let channel = try listener.accept(timeoutMilliseconds: 5000)
            let header = try channel.receiveHeader()
            #expect(header.kind == .hello)
            #expect(try MigrationHello(decoding: channel.receivePayload(length: header.length)).configuration == [1])
            pthread_join(thread, nil)
        }
        #expect(throws: MigrationError.self) { try MigrationChannel.connect(to: .unix(path: path), timeoutMilliseconds: 500) }
        // A path too long for sockaddr_un is refused even when the address was built without parsing.
        let long = "/tmp/" + String(repeating: "a", count: 200)
        #expect(throws: MigrationError.badAddress("unix:\(long)")) { try MigrationListener(.unix(path: long)) }
    }
}

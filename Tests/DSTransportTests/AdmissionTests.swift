import Testing
import Synchronization
import Glibc
import DSRing
import DSWire
import DSCodec
@testable import DSTransport
import DSTestSupport
import DSSupport

/// The admission policy alone: a state machine fed times and events.
@Suite struct AdmissionPolicyTests {
    let limits = AdmissionLimits(maxPending: 4, maxPerAddress: 3, deadline: .seconds(2))

    @Test func standardLimits() {
        let l = AdmissionLimits.standard(timeout: .seconds(30))
        #expect(l.maxPending == 128 && l.maxPerAddress == 80 && l.deadline == .seconds(10))
        #expect(AdmissionLimits.standard(timeout: .seconds(3)).deadline == .seconds(3))
    }

    /// An address at its limit sheds its own oldest unauthenticated connection for a newcomer.
    @Test func anAddressAtItsLimitShedsItsOldestUnauthenticated() {
        var p = AdmissionPolicy(limits: limits)
        #expect(p.admit(0, from: "a", now: .seconds(0)) == .admit(shedding: []))
        #expect(p.admit(1, from: "a", now: .seconds(1)) == .admit(shedding: []))
        p.authenticated(0)
        #expect(p.admit(2, from: "a", now: .seconds(1)) == .admit(shedding: []))
        // 0 is authenticated: 1 is the oldest unauthenticated.
        #expect(p.admit(3, from: "a", now: .milliseconds(1500)) == .admit(shedding: [1]))
        #expect(p.admit(4, from: "a", now: .seconds(2)) == .admit(shedding: [2]))
        #expect(p.count(from: "a") == 3 && p.waiting[0] != nil)
        // Every one from "a" authenticated: a newcomer from "a" is refused, not anyone shed.
        p.authenticated(3); p.authenticated(4)
        guard case .refuse(let why) = p.admit(5, from: "a", now: .seconds(2)) else {
            Issue.record("admitted past the per-address limit of authenticated connections")
            return
        }
        #expect(why.contains("3 authenticated connections from a"))
        // Another address still gets in.
        #expect(p.admit(6, from: "b", now: .seconds(2)) == .admit(shedding: []))
    }

    /// At the global limit the newcomer sheds from the address holding the most
    /// unauthenticated connections, never from a quieter address.
    @Test func theGlobalLimitShedsFromTheBusiestAddress() {
        var p = AdmissionPolicy(limits: limits)
        _ = p.admit(0, from: "legit", now: .seconds(0))
        _ = p.admit(1, from: "flood", now: .seconds(1))
        _ = p.admit(2, from: "flood", now: .seconds(2))
        _ = p.admit(3, from: "flood", now: .seconds(3))
        // "legit"'s connection is the oldest, but "flood" holds more.
        #expect(p.admit(4, from: "flood2", now: .seconds(4)) == .admit(shedding: [1]))
        #expect(p.waiting[0] != nil)
        #expect(p.admit(5, from: "legit", now: .seconds(5)) == .admit(shedding: [2]))
        #expect(p.waiting[0] != nil && p.count == 4)
    }

    @Test func allAuthenticatedMeansRefuse() {
        var p = AdmissionPolicy(limits: AdmissionLimits(maxPending: 2, maxPerAddress: 2, deadline: .seconds(1)))
        _ = p.admit(0, from: "a", now: .zero); p.authenticated(0)
        _ = p.admit(1, from: "b", now: .zero); p.authenticated(1)
        guard case .refuse = p.admit(2, from: "c", now: .zero) else {
            Issue.record("a third connection got in past two authenticated ones")
            return
        }
        p.remove(0)
        #expect(p.admit(2, from: "c", now: .zero) == .admit(shedding: []))
    }

    /// One deadline per connection, whatever it did since.
    @Test func deadlines() {
        var p = AdmissionPolicy(limits: limits)
        #expect(p.nextDeadline == nil)
        _ = p.admit(0, from: "a", now: .seconds(10))
        _ = p.admit(1, from: "b", now: .seconds(11))
        p.authenticated(1)
        #expect(p.nextDeadline == .seconds(12))
        #expect(p.expire(now: .milliseconds(11999)).isEmpty)
        #expect(p.expire(now: .seconds(12)) == [0])
        #expect(p.expire(now: .seconds(20)) == [1])
        #expect(p.count == 0 && p.nextDeadline == nil)
    }
}

/// Hostile connections against a real listener on 127.0.0.1, bounded in count and time.
@Suite(.serialized) struct AdmissionTests {
    func prepared(_ n: Int = 1_500_000, seed: UInt64 = 61) -> (String, String, [UInt8]) {
        preparedFiles("admission", n, seed: seed)
    }

    /// Holds `count` idle connections to `endpoint` (sending nothing), reopening every one the
    /// receiver closes, until `stop`: an attacker with no key who reconnects as fast as it is
    /// shed.
    final class IdleFlood: @unchecked Sendable {
        // @unchecked: `fds` is touched only by the flood's thread, and by `stop` after joining it.
        private let done = Atomic<Bool>(false)
        private var fds: [Int32] = []
        private var thread: OSThread?
        let reopened = Atomic<Int>(0)

        init(_ endpoint: Endpoint, count: Int) throws {
            fds = (0..<count).map { _ in rawConnect(endpoint) }
            thread = try OSThread(name: "ds-test-flood") { [self] in
                while !done.load(ordering: .relaxed) {
                    for i in fds.indices {
                        var p = pollfd(fd: fds[i], events: Int16(POLLIN), revents: 0)
                        guard poll(&p, 1, 0) == 1 else { continue }
                        close(fds[i])
                        fds[i] = rawConnect(endpoint)
                        reopened.add(1, ordering: .relaxed)
                    }
                    usleep(2_000)
                }
            }
        }

        func stop() {
            done.store(true, ordering: .relaxed)
            thread?.join()
            // The thread's closure holds the flood: dropping it breaks that cycle (LeakSanitizer).
            thread = nil
            for fd in fds { close(fd) }
        }
    }

    /// A listener's worth of idle connections from the sender's own address (the most one
    /// address may hold), reopened as soon as they are shed, does not keep out a sender: the
    /// newcomer sheds the oldest unauthenticated connection. Plaintext and PSK alike.
    @Test(arguments: [false, true])
    func idleConnectionsDoNotLockOutTheSender(tls: Bool) throws {
        let (src, out, data) = prepared()
        defer { unlink(src); unlink(out) }
        var o = options(connections: 3, timeout: .seconds(5))
        if tls { o.security = pskOptions().security; o.allowInsecure = false }
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        let limits = receiver.listener.limits
        let flood = try IdleFlood(receiver.listener.endpoint, count: limits.maxPerAddress)
        #expect(eventually { receiver.listener.pendingCount == limits.maxPerAddress })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(10)) }
        let start = Monotonic.now
        let sent = TransferSender.send(try TransferSource(path: src), to: receiver.listener.endpoint, options: o, warn: { _ in })
        t.join()
        let elapsed = Monotonic.now - start
        flood.stop()
        #expect(sent.completed, "\(sent.error?.message ?? "")")
        #expect(received?.completed == true, "\(received?.error?.message ?? "")")
        let same = readFile(out) == data
        #expect(same, "the received bytes differ from those sent")
        // The sender's channels shed idle connections (which the flood reopened at once).
        #expect(receiver.listener.admissionDropCount >= 1)
        #expect(elapsed < .seconds(8), "admitted only after \(elapsed)")
    }

    /// A connection that trickles its first bytes (a ClientHello, or a preamble) one at a time
    /// keeps no slot past its deadline: the receiver cuts it off then, however the bytes come.
    @Test(arguments: [false, true])
    func aTrickledHandshakeIsCutOffAtTheDeadline(tls: Bool) throws {
        var o = options(connections: 1, timeout: .seconds(1))
        if tls { o.security = pskOptions().security; o.allowInsecure = false }
        let warnings = Warnings()
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: warnings.sink)
        #expect(receiver.listener.limits.deadline == .seconds(1))
        let fd = rawConnect(receiver.listener.endpoint)
        defer { close(fd) }
        // The start of a TLS record (a ClientHello), or of a preamble: one byte every 150 ms.
        let bytes: [UInt8] = tls ? [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03] + [UInt8](repeating: 7, count: 40)
                                 : Array(Preamble.magic) + [UInt8](repeating: 0, count: 40)
        let cut = Atomic<Bool>(false)
        let trickle = try OSThread(name: "ds-test-trickle") {
            for b in bytes where !cut.load(ordering: .relaxed) {
                sendRaw(fd, [b])
                usleep(150_000)
            }
        }
        let start = Monotonic.now
        let closed = closedByPeer(fd, timeout: .seconds(6))
        let after = Monotonic.now - start
        cut.store(true, ordering: .relaxed)
        trickle.join()
        #expect(closed)
        // The deadline is 1 s; generous above (a loaded machine), never far below.
        #expect(after >= .milliseconds(800) && after < .seconds(4), "cut off after \(after)")
        #expect(eventually { warnings.contains("within 1.0 seconds of connecting") || warnings.contains("within 1 seconds of connecting") }, "\(warnings.all)")
        #expect(receiver.listener.admissionDropCount == 1 && receiver.listener.pendingCount == 0)
    }

    /// Connections that are not the sender — garbage, an HTTP request, half a handshake, a TLS
    /// peer with another key, a plaintext devstream sender to a TLS receiver, a channel that
    /// did not open the session — each turned away; none ends the receive, and the real sender
    /// that comes after completes.
    @Test(arguments: [false, true])
    func strangersNeverEndAWaitingReceiver(tls: Bool) throws {
        let (src, out, data) = prepared(800_000, seed: 62)
        defer { unlink(src); unlink(out) }
        var o = options(connections: 2, timeout: .seconds(3))
        if tls { o.security = pskOptions().security; o.allowInsecure = false }
        let warnings = Warnings()
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: warnings.sink)
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(20)) }
        let endpoint = receiver.listener.endpoint
        let ring = try Ring(entries: 8)

        func stranger(_ bytes: [UInt8]) {
            let fd = rawConnect(endpoint)
            sendRaw(fd, bytes)
            #expect(closedByPeer(fd), "a stranger (\(bytes.prefix(8))) was not closed")
            close(fd)
        }
        stranger([UInt8](repeating: 0x5a, count: 69))
        stranger(Array("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8))
        // Half a ClientHello, then the connection closes.
        let half = rawConnect(endpoint)
        sendRaw(half, [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        close(half)
        // A preamble cut short.
        stranger(Array(Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 2, chunkSize: 65536,
                                mode: .addressable, totalSize: 100).encoded().prefix(40)))
        var expected = 3
        if tls {
            // A plaintext devstream sender, told why in plaintext.
            stranger(Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 2, chunkSize: 65536,
                              mode: .addressable, totalSize: 100).encoded())
            // A TLS peer with another key.
            let wrong = try SecurityContext(pskOptions(key: 99).security!, server: false)
            let fd = try Sockets.connect(endpoint, ring: ring, timeout: .seconds(5))
            #expect(throws: TransferError.self) { _ = try SecureStream.handshake(fd: fd, context: wrong, ring: ring, timeout: .seconds(5), peer: "test") }
            close(fd)
            // A peer with the key whose first channel is not channel 0 (a replayed channel 1).
            let right = try SecurityContext(o.security!, server: false)
            let fd1 = try Sockets.connect(endpoint, ring: ring, timeout: .seconds(5))
            let s = try SecureStream.handshake(fd: fd1, context: right, ring: ring, timeout: .seconds(5), peer: "test")
            var p = Preamble(features: [.xxh3, .tls], sessionID: .random(), channelIndex: 1, channelCount: 2, chunkSize: 65536,
                             mode: .addressable, totalSize: 100)
            p.authMethod = Preamble.authSessionToken
            p.authLength = 32
            try s.send(p.encoded() + [UInt8](repeating: 1, count: 32), ring: ring, timeout: .seconds(5))
            let reply = (try? s.receive(count: FrameHeader.size, ring: ring, timeout: .seconds(5))) ?? []
            #expect(reply.count == FrameHeader.size && (try? reply.withUnsafeBytes { try FrameHeader.decode($0) })?.type == .reject)
            close(fd1)
            expected = 6
        } else {
            // A TLS client to a plaintext receiver.
            stranger([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03] + [UInt8](repeating: 7, count: 60))
            expected = 4
        }
        #expect(eventually { receiver.listener.rejectedCount + receiver.listener.droppedCount >= expected },
                "\(receiver.listener.rejectedCount) rejected, \(receiver.listener.droppedCount) dropped: \(warnings.all)")
        let sent = TransferSender.send(try TransferSource(path: src), to: endpoint, options: o, warn: { _ in })
        t.join()
        #expect(sent.completed, "\(sent.error?.message ?? "")")
        #expect(received?.completed == true, "\(received?.error?.message ?? "") — \(warnings.all)")
        let same = readFile(out) == data
        #expect(same)
        if tls {
            #expect(warnings.contains("does not speak TLS") && warnings.contains("pre-shared keys differ")
                    && warnings.contains("not using TLS"), "\(warnings.all)")
        } else {
            #expect(warnings.contains("not a devstream sender") && warnings.contains("speaks TLS"), "\(warnings.all)")
        }
    }

    /// A peer that authenticates (it holds the key) but sends no preamble is cut off at the
    /// same deadline: authentication spares a connection from shedding, not from the clock.
    @Test func anAuthenticatedSilentPeerIsCutOffAtTheDeadline() throws {
        var o = pskOptions(connections: 1)
        o.timeout = .milliseconds(800)
        let warnings = Warnings()
        let listener = try SessionListener(endpoint: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: warnings.sink)
        try listener.start()
        defer { listener.stop() }
        let ring = try Ring(entries: 8)
        let client = try SecurityContext(o.security!, server: false)
        let fd = try Sockets.connect(listener.endpoint, ring: ring, timeout: .seconds(5))
        defer { close(fd) }
        let start = Monotonic.now
        let s = try SecureStream.handshake(fd: fd, context: client, ring: ring, timeout: .seconds(5), peer: "test")
        let got = (try? s.receive(count: 1, ring: ring, timeout: .seconds(5))) ?? []
        #expect(got.isEmpty)
        let after = Monotonic.now - start
        #expect(after >= .milliseconds(600) && after < .seconds(4), "cut off after \(after)")
        #expect(eventually { listener.admissionDropCount == 1 && warnings.contains("did not authenticate and send its preamble") }, "\(warnings.all)")
    }

    /// Every waiting slot is held by a peer that authenticated: a sender that comes now is
    /// reset, and says so — admission, not its key.
    @Test func aSenderTurnedAwayByAdmissionSaysSo() throws {
        let (src, out, _) = prepared(10_000)
        defer { unlink(src); unlink(out) }
        var o = pskOptions(connections: 1)
        o.timeout = .seconds(5)
        let listener = try SessionListener(endpoint: Endpoint(host: "127.0.0.1", port: 0), options: o,
                                           limits: AdmissionLimits(maxPending: 2, maxPerAddress: 2, deadline: .seconds(60)), warn: { _ in })
        try listener.start()
        defer { listener.stop() }
        let ring = try Ring(entries: 8)
        let client = try SecurityContext(o.security!, server: false)
        var held: [(Int32, SecureStream)] = []
        defer { for (fd, _) in held { close(fd) } }
        for _ in 0..<2 {
            let fd = try Sockets.connect(listener.endpoint, ring: ring, timeout: .seconds(5))
            held.append((fd, try SecureStream.handshake(fd: fd, context: client, ring: ring, timeout: .seconds(5), peer: "test")))
        }
        // Both held peers authenticated on the listener's side too: a client's handshake returns
        // before the server has read its Finished, and an unauthenticated one would be shed for
        // the newcomer (under ASan's slowdown it was, and the newcomer waited instead).
        #expect(eventually { listener.pendingCount == 2 && listener.authenticatedCount == 2 })
        let r = TransferSender.send(try TransferSource(path: src), to: listener.endpoint, options: o, warn: { _ in })
        #expect(!r.completed && r.error?.code == .rejected, "\(r.error?.message ?? "")")
        let message = r.error?.message ?? ""
        #expect(message.contains("reset the connection before it was authenticated") && message.contains("admission deadline")
                && message.contains("answers wrong credentials with a TLS alert"), "\(message)")
        #expect(listener.admissionDropCount == 1)
    }

    /// A plaintext receiver that hangs up on channel 0 without a `reject`: the sender says the
    /// receiver closed it before accepting it, not that the network failed.
    @Test func aPlaintextSenderHungUpOnSaysSo() throws {
        let (src, out, _) = prepared(10_000)
        defer { unlink(src); unlink(out) }
        let (lfd, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        defer { close(lfd) }
        let t = try OSThread(name: "ds-test") {
            let c = accept(lfd, nil, nil)
            var buf = [UInt8](repeating: 0, count: Preamble.size)
            _ = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, Int32(MSG_WAITALL)) }
            SessionListener.reset(Connection(fd: c))
        }
        let r = TransferSender.send(try TransferSource(path: src), to: Endpoint(host: "127.0.0.1", port: port),
                                    options: options(connections: 1), warn: { _ in })
        t.join()
        #expect(!r.completed && r.error?.code == .rejected, "\(r.error?.message ?? "")")
        #expect(r.error?.message.contains("closed channel 0 before accepting it") == true, "\(r.error?.message ?? "")")
    }
}

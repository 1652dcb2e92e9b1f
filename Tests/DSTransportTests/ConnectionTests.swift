import Testing
import Synchronization
import Glibc
import DSRing
import DSWire
import DSCodec
@testable import DSTransport
import DSTestSupport
import DSSupport

/// A scripted fault plan for a connection's sends: `faults` in order, then `.none`. Counts the
/// sends it saw, so a test knows the faults reached the funnel. `armed` off lets the TLS
/// handshake through untouched.
final class SendScript: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`: the plan runs on the senders' threads (a
    // keepalive pacer's too) while the test reads `calls` on its own (ThreadSanitizer saw the
    // unguarded read race the pacer's write).
    private let lock = ConditionLock()
    private var faults: [InjectedFault]
    private var callCount = 0
    private var isArmed = true
    init(_ faults: [InjectedFault]) { self.faults = faults }

    var calls: Int { lock.withLock { callCount } }
    var armed: Bool {
        get { lock.withLock { isArmed } }
        set { lock.withLock { isArmed = newValue } }
    }

    var plan: FaultPlan {
        FaultPlan { [self] kind, _ in
            lock.withLock {
                guard isArmed, kind == .send else { return .none }
                callCount += 1
                return faults.isEmpty ? .none : faults.removeFirst()
            }
        }
    }
}

/// A connected AF_UNIX stream pair.
func socketPair() -> (Int32, Int32) {
    var sv: [Int32] = [-1, -1]
    precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0)
    return (sv[0], sv[1])
}

/// Reads up to `count` bytes from `fd`, waiting up to `timeout` in all; fewer when the peer
/// closed (or shut down) or the time ran out.
func readBytes(_ fd: Int32, count: Int, timeout: Duration = .seconds(5)) -> [UInt8] {
    var out: [UInt8] = []
    let deadline = Monotonic.now + timeout
    var buf = [UInt8](repeating: 0, count: 65536)
    while out.count < count {
        let left = deadline - Monotonic.now
        guard left > .zero else { break }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(max(1, left.milliseconds))) > 0 else { continue }
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, count - out.count), 0) }
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return out
}

/// Reads one whole frame from `fd`: its header and payload (nil: it did not all arrive).
func readFrame(_ fd: Int32, timeout: Duration = .seconds(5)) -> (header: FrameHeader, payload: [UInt8])? {
    let h = readBytes(fd, count: FrameHeader.size, timeout: timeout)
    guard h.count == FrameHeader.size, let header = try? h.withUnsafeBytes({ try FrameHeader.decode($0) }) else { return nil }
    let payload = readBytes(fd, count: Int(header.wireLength), timeout: timeout)
    guard payload.count == Int(header.wireLength) else { return nil }
    return (header, payload)
}

/// Whether the peer of `fd` has closed or shut down its side (a read returns end of file).
func readsEndOfFile(_ fd: Int32, timeout: Duration = .seconds(5)) -> Bool {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    guard poll(&p, 1, Int32(timeout.milliseconds)) > 0 else { return false }
    var b: UInt8 = 0
    return recv(fd, &b, 1, Int32(MSG_DONTWAIT)) == 0
}

/// Whether the peer closes `fd` (an end of stream or a reset) within `timeout`.
func closedByPeer(_ fd: Int32, timeout: Duration = .seconds(5)) -> Bool {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    let deadline = Monotonic.now + timeout
    var b = [UInt8](repeating: 0, count: 4096)
    while Monotonic.now < deadline {
        guard poll(&p, 1, Int32(max(1, (deadline - Monotonic.now).milliseconds))) > 0 else { return false }
        let n = recv(fd, &b, b.count, Int32(MSG_DONTWAIT))
        if n == 0 || (n < 0 && errno == ECONNRESET) { return true }
        if n < 0 && errno != EAGAIN { return false }
    }
    return false
}

/// Waits up to `timeout` for `condition`.
func eventually(_ timeout: Duration = .seconds(5), _ condition: () -> Bool) -> Bool {
    let deadline = Monotonic.now + timeout
    while !condition() {
        if Monotonic.now > deadline { return false }
        sleep(for: .milliseconds(5))
    }
    return true
}

let payload300 = (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }

/// The one send funnel (`Connection.send`): control replies, keepalives and farewells go through
/// it, so faults injected there reach all of them.
@Suite struct ConnectionTests {
    // MARK: Control replies (`.blocking`)

    /// EAGAIN, EINTR and a short send, then success: the reply arrives whole, the connection is
    /// not left marked mid-frame. With a ring, the ring's send is used and the plan still applies.
    @Test(arguments: [false, true])
    func controlReplyResumesAfterEAGAINEINTRAndShortSend(withRing: Bool) throws {
        let (a, b) = socketPair()
        defer { close(b) }
        let script = SendScript([.fail(.wouldBlock), .fail(.interrupted), .short(7), .fail(.wouldBlock), .short(1)])
        let conn = Connection(fd: a, faults: script.plan)
        defer { conn.close() }
        let ring = withRing ? try Ring(entries: 4) : nil
        let frame = controlFrame(.loadStats, stream: 2, aux: 9, payload: payload300)
        #expect(try conn.send(frame, timeout: .seconds(2), ring: ring, mode: .blocking))
        #expect(!conn.socketGuard.midFrame)
        #expect(script.calls >= 6, "every fault reached the send, then it went on")
        let got = try #require(readFrame(b))
        #expect(got.header.type == .loadStats && got.header.stream == 2 && got.header.aux == 9)
        #expect(got.payload == payload300)
        #expect(got.header.checksum == payload300.withUnsafeBytes { xxh3($0) })
    }

    /// ECONNRESET before any byte: a clear error, nothing on the wire, the farewell still allowed.
    @Test func controlReplyResetIsAClearError() throws {
        let (a, b) = socketPair()
        defer { close(b) }
        let conn = Connection(fd: a, faults: SendScript([.fail(.connectionReset)]).plan)
        defer { conn.close() }
        var caught: ConnectionFailure?
        do { try conn.send(controlFrame(.resumed, payload: payload300), timeout: .seconds(2)) } catch { caught = error }
        let failure = try #require(caught)
        guard case .socket(let e) = failure else { Issue.record("not a socket failure: \(failure)"); return }
        #expect(e == .connectionReset)
        #expect(failure.reason(peer: "the source", timeout: .seconds(2)).contains("ECONNRESET"))
        #expect(!conn.socketGuard.midFrame)
        #expect(readBytes(b, count: 1, timeout: .milliseconds(100)).isEmpty)
    }

    /// A reply that fails after part of it went out leaves the stream torn: the abort's farewell
    /// must not be spliced into it. (ControlReplies used to clear the mark whatever happened.)
    @Test func aHalfSentReplyBlocksTheFarewell() throws {
        let (a, b) = socketPair()
        defer { close(b) }
        let script = SendScript([.short(5), .fail(.connectionReset)])
        let conn = Connection(fd: a, faults: script.plan)
        defer { conn.close() }
        #expect(throws: ConnectionFailure.self) { try conn.send(controlFrame(.loaded, payload: payload300), timeout: .seconds(2)) }
        #expect(conn.socketGuard.midFrame)
        let abort = AbortSignal(side: "destination")
        abort.watch(conn)
        abort.abort(TransferError(.localIO, "disk full"))
        #expect(script.calls == 2, "the farewell never reached the socket")
        #expect(readBytes(b, count: 1000, timeout: .seconds(2)).count == 5, "only the reply's first 5 bytes, then end of file")
    }

    /// The peer's farewell is read whole however long its text: the encoder cuts the text to
    /// `WireLimits.maxStringBytes` of UTF-8 and the peek reads that much. (Found with the
    /// payloads fuzz target: 2000 characters of "€" were 6000 bytes, which the decoder refused,
    /// so the peer's reason was lost.)
    @Test func theLongestFarewellIsReadWhole() throws {
        let (a, b) = socketPair()
        defer { close(b) }
        let conn = Connection(fd: a)
        defer { conn.close() }
        let frame = ErrorMessage(code: 1, message: String(repeating: "€", count: 2000)).frame()
        #expect(frame.count == FrameHeader.size + ErrorMessage.maxEncodedSize - 1, "1365 whole euro signs, 4095 bytes")
        #expect(frame.withUnsafeBytes { send(b, $0.baseAddress, $0.count, 0) } == frame.count)
        let message = try #require(Channel.pendingErrorMessage(conn))
        #expect(message == PeerText.escape(String(repeating: "€", count: 1365)))
    }

    /// A peer that stops reading: the reply fails within its timeout, saying so.
    @Test func controlReplyToAPeerThatStopsReadingTimesOut() throws {
        let (a, b) = socketPair()
        defer { close(b) }
        var small: Int32 = 4096
        setsockopt(a, SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        let conn = Connection(fd: a)
        defer { conn.close() }
        let t0 = Monotonic.now
        var caught: ConnectionFailure?
        do {
            for _ in 0..<100_000 { try conn.send(controlFrame(.loadStats, payload: payload300), timeout: .milliseconds(200)) }
        } catch { caught = error }
        let failure = try #require(caught)
        #expect(failure.reason(peer: "the source", timeout: .milliseconds(200)).contains("the source has not read its socket for"))
        #expect(Monotonic.now - t0 < .seconds(20))
    }

    // MARK: Keepalives (`.ifRoom`)

    /// EAGAIN, a short send and EINTR on the pacer's send: the keepalive still arrives whole and
    /// the session goes on.
    @Test func keepaliveGoesOutThroughInjectedFaults() throws {
        let (a, b) = socketPair()
        defer { close(b) }
        let script = SendScript([.fail(.wouldBlock), .short(3), .fail(.interrupted), .short(11)])
        let conn = Connection(fd: a, faults: script.plan)
        defer { conn.close() }
        let abort = AbortSignal(side: "sender")
        let pacer = try KeepalivePacer(interval: .milliseconds(20), abort: abort)
        pacer.add(conn)
        let got = readFrame(b)
        pacer.stop()
        #expect(got?.header.type == .keepalive && got?.payload.isEmpty == true)
        #expect(script.calls >= 5)
        #expect(!abort.isAborted)
        #expect(!conn.socketGuard.midFrame)
    }

    /// A keepalive cut off half way breaks the stream: the session aborts, saying why.
    @Test func keepaliveLeftHalfSentAbortsTheSession() throws {
        let (a, b) = socketPair()
        defer { close(b) }
        let conn = Connection(fd: a, faults: SendScript([.short(10), .fail(.connectionReset)]).plan)
        defer { conn.close() }
        let abort = AbortSignal(side: "sender")
        let pacer = try KeepalivePacer(interval: .milliseconds(20), abort: abort)
        pacer.add(conn)
        #expect(eventually { abort.isAborted })
        pacer.stop()
        #expect(abort.error?.message.contains("sending a keepalive failed") == true, "\(String(describing: abort.error))")
    }

    /// A keepalive refused before any byte went out is left for the channel's own next send or
    /// receive to report (with the peer's reason): no abort from the pacer.
    @Test func keepaliveResetBeforeAnyByteIsLeftToTheChannel() throws {
        let (a, b) = socketPair()
        defer { close(b) }
        let script = SendScript(Array(repeating: .fail(.connectionReset), count: 1000))
        let conn = Connection(fd: a, faults: script.plan)
        defer { conn.close() }
        let abort = AbortSignal(side: "sender")
        let pacer = try KeepalivePacer(interval: .milliseconds(20), abort: abort)
        pacer.add(conn)
        #expect(eventually { script.calls >= 3 })
        pacer.stop()
        #expect(!abort.isAborted)
        #expect(!conn.socketGuard.midFrame)
        #expect(readBytes(b, count: 1, timeout: .milliseconds(50)).isEmpty)
    }

    // MARK: Farewells (`.bestEffort`)

    /// EINTR and a short send on the farewell: retried and resumed; the peer reads the whole
    /// error frame, then end of file.
    @Test func farewellGoesOutThroughInjectedFaults() throws {
        let (a, b) = socketPair()
        defer { close(b) }
        let script = SendScript([.fail(.interrupted), .short(5), .short(20)])
        let conn = Connection(fd: a, faults: script.plan)
        defer { conn.close() }
        let abort = AbortSignal(side: "receiver")
        abort.watch(conn)
        abort.abort(TransferError(.localIO, "disk full"))
        #expect(script.calls >= 4)
        let got = try #require(readFrame(b))
        #expect(got.header.type == .error)
        #expect(try ErrorMessage.decode(got.payload).message == "the receiver failed: disk full")
        #expect(readsEndOfFile(b))
    }

    /// EAGAIN on the farewell: it never waits; the socket is shut down at once. ECONNRESET: no
    /// harm done either.
    @Test(arguments: [Errno.wouldBlock, .connectionReset, .brokenPipe])
    func farewellFailureIsDroppedWithoutWaiting(_ e: Errno) throws {
        let (a, b) = socketPair()
        defer { close(b) }
        let script = SendScript(Array(repeating: .fail(e), count: 100))
        let conn = Connection(fd: a, faults: script.plan)
        defer { conn.close() }
        let abort = AbortSignal(side: "receiver")
        abort.watch(conn)
        let t0 = Monotonic.now
        #expect(abort.abort(TransferError(.localIO, "disk full")))
        #expect(Monotonic.now - t0 < .milliseconds(500))
        #expect(script.calls == 1)
        #expect(readsEndOfFile(b))
    }

    /// A frame half sent: the farewell is skipped (it would land inside that frame).
    @Test func farewellIsSkippedMidFrame() throws {
        let (a, b) = socketPair()
        defer { close(b) }
        let script = SendScript([])
        let conn = Connection(fd: a, faults: script.plan)
        defer { conn.close() }
        conn.socketGuard.setMidFrame(true)
        let abort = AbortSignal(side: "receiver")
        abort.watch(conn)
        abort.abort(TransferError(.localIO, "disk full"))
        #expect(script.calls == 0)
        #expect(readsEndOfFile(b))
    }

    // MARK: Owning the socket

    /// `close` closes the socket once: a second close, a shutdown, the session's abort and
    /// deinit leave alone the socket that reuses its fd number. (A failed migration used to
    /// shut its sockets down again after closing them: `SourceRun.shutdown` runs twice and
    /// `AbortSignal.shutdownAll` kept the bare fd numbers, which in an embedding process may
    /// belong to another socket by then.)
    @Test func connectionClosesItsSocketExactlyOnce() throws {
        var checked = false
        for _ in 0..<50 where !checked {
            let (a, b) = socketPair()
            let (c, d) = socketPair()
            defer { close(b); close(c); close(d) }
            var conn: Connection? = Connection(fd: a)
            let abort = AbortSignal(side: "source")
            abort.watch(conn!)
            conn!.close()
            #expect(readsEndOfFile(b), "closed: the peer reads end of file")
            // Another socket takes the number `a` (another test's thread may take it first: retry).
            let reused = fcntl(c, F_DUPFD_CLOEXEC, a)
            guard reused == a else { if reused >= 0 { close(reused) }; continue }
            defer { close(reused) }
            conn!.close()
            conn!.shutdown()
            abort.shutdownAll()
            abort.abort(TransferError(.localIO, "late failure"))
            #expect(conn!.isClosed)
            conn = nil
            #expect(fcntl(reused, F_GETFD) >= 0, "the reused number is still open")
            let x: UInt8 = 42
            #expect(withUnsafeBytes(of: x) { send(reused, $0.baseAddress, 1, Int32(MSG_NOSIGNAL)) } == 1, "and not shut down")
            #expect(readBytes(d, count: 1) == [42])
            checked = true
        }
        #expect(checked, "the fd number was never free for the check")
    }

    /// A connection nobody closed closes its socket when it goes away.
    @Test func connectionClosesItsSocketOnDeinit() throws {
        let (a, b) = socketPair()
        defer { close(b) }
        do {
            let conn = Connection(fd: a)
            #expect(!conn.isClosed)
        }
        #expect(readsEndOfFile(b))
    }

    // MARK: TLS

    /// With TLS, control replies, keepalives and the farewell all go through the stream, faults
    /// and all: the receiver decrypts and decodes each of them.
    @Test func controlKeepaliveAndFarewellGoThroughTheTLSStream() throws {
        let (a, b) = socketPair()
        let security = try #require(pskOptions().security)
        let server = try SecurityContext(security, server: true)
        let client = try SecurityContext(security, server: false)
        let script = SendScript([.fail(.wouldBlock), .short(9), .fail(.interrupted), .short(30)])
        script.armed = false
        let sender = Connection(fd: a, faults: script.plan)
        let receiver = Connection(fd: b)
        defer { sender.close(); receiver.close() }
        let serverFailure = Mutex<TransferError?>(nil)
        let t = try OSThread(name: "ds-test") {
            do throws(TransferError) {
                let ring: Ring
                do { ring = try Ring(entries: 4) } catch { throw TransferError(.localIO, "\(error)") }
                try receiver.startTLS(server, ring: ring, timeout: .seconds(5), peer: "client")
            } catch { serverFailure.withLock { $0 = error } }
        }
        let ring = try Ring(entries: 4)
        try sender.startTLS(client, ring: ring, timeout: .seconds(5), peer: "server")
        t.join()
        #expect(serverFailure.withLock { $0 } == nil)
        #expect(sender.secure != nil && receiver.secure != nil)
        script.armed = true

        try sender.send(controlFrame(.loaded, aux: 4, payload: payload300), timeout: .seconds(2))
        #expect(script.calls >= 5)
        let abort = AbortSignal(side: "destination")
        abort.watch(sender)
        let pacer = try KeepalivePacer(interval: .milliseconds(20), abort: abort)
        pacer.add(sender)

        let ring2 = try Ring(entries: 4)
        let ch = try Channel(index: 0, connection: receiver, ring: ring2, chunkSize: WireLimits.minChunkSize,
                         compression: false, acceleration: 1, timeout: .seconds(5))
        let reply = try ch.receive()
        #expect(reply.header.type == .loaded && reply.header.aux == 4 && reply.control == payload300)
        let before = ch.stats.wireBytes
        sleep(for: .milliseconds(150))  // a few keepalives
        pacer.stop()
        #expect(!abort.isAborted)
        abort.abort(TransferError(.localIO, "disk full"))
        let farewell = try ch.receive()  // keepalives are skipped by receive
        #expect(farewell.header.type == .error)
        #expect(try ErrorMessage.decode(farewell.control).message == "the destination failed: disk full")
        #expect(ch.stats.wireBytes - before >= UInt64(FrameHeader.size) * 2 + UInt64(farewell.control.count),
                "at least one keepalive arrived before the farewell")
    }
}

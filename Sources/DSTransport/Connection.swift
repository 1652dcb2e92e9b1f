import Glibc
import Synchronization
import DSRing
import DSSupport

/// Why a send or a receive on a connection failed: the socket's errno, or TLS's reasons.
package enum ConnectionFailure: Error {
    case socket(Errno)
    case tls(String)
}

/// How a send on a connection may wait, and when it may be skipped.
package enum SendMode: Sendable {
    /// Frames and control replies: waits for room up to the timeout, then fails.
    case blocking
    /// Keepalives: sent only when no frame is half sent and the socket has room for it now
    /// (else skipped: a full socket means the peer has data to read anyway); once begun it is
    /// finished like `.blocking`, so it never leaves half a frame in a stream that goes on.
    case ifRoom
    /// Farewells: never waits, never waits for another sender, and is skipped while a frame is
    /// half sent, while another thread holds the TLS stream, or once the connection is closed;
    /// what the socket does not take at once is dropped (the socket is shut down next).
    case bestEffort
}

/// One connected socket of a session, and what everyone who sends on it shares.
///
/// Made by whoever dials or accepts (`ChannelSet.connect`, `SessionListener`) and handed to
/// whoever sends: the `Channel`, the `KeepalivePacer`, the abort's farewell (`AbortSignal`) and
/// a session's control replies. It holds:
/// - the socket, which it owns: `close()` closes it exactly once (deinit does, if no one did);
/// - the TLS stream, when the session is encrypted (`startTLS`), freed with the connection;
/// - the `SendTurn`: whether the channel's thread or the keepalive pacer sends now;
/// - the `SocketGuard`: a frame is half sent, so no farewell may be sent.
///
/// Every send goes through `send(_:timeout:ring:mode:)`, the one send-within-a-deadline funnel:
/// through the TLS stream when there is one, and in any case through `SocketSend.sendAll`, where
/// a `FaultPlan` (`faults`) or the ring's `FaultInjector` can inject faults.
package final class Connection: Sendable {
    // Sendable: every stored property is immutable or thread-safe by itself. The TLS stream is
    // stored at most once (`startTLS`, before the connection's first frame) and locks itself;
    // the send turn and the guard are atomics; `closed` is under its mutex, which `close` and
    // `shutdown` both take, so the fd is closed exactly once and never shut down after that
    // (its number may belong to another socket by then).
    package let fd: Int32
    /// Who sends now: the channel's thread or the keepalive pacer.
    package let sendTurn = SendTurn()
    /// Set while a frame is half sent on the socket (then no farewell may be sent).
    package let socketGuard = SocketGuard()
    /// Faults to inject into this connection's sends (tests); nil in production.
    package let faults: FaultPlan?
    private let stream = AtomicLazyReference<SecureStream>()
    private let closed = Mutex(false)
    private let keepalives = Atomic<UInt64>(0)

    /// Adopts the connected socket `fd`: the connection closes it.
    package convenience init(fd: Int32) { self.init(fd: fd, faults: nil) }

    /// Adopts `fd`, with `faults` injected into every send on it (TLS flights included; a ring
    /// used for a send applies its own injector as well).
    package init(fd: Int32, faults: FaultPlan?) {
        self.fd = fd
        self.faults = faults
    }

    deinit { close() }

    /// The TLS stream (nil: plaintext).
    package var secure: SecureStream? { stream.load() }

    /// Runs the TLS 1.3 handshake on the socket (client or server per `context`); everything
    /// after it goes through the stream. Call it once, before the connection's first frame.
    /// - Parameter timeout: how long the peer may stay silent during the handshake.
    package func startTLS(_ context: SecurityContext, ring: Ring, timeout: Duration, peer: String) throws(TransferError) {
        precondition(secure == nil, "a connection runs its TLS handshake once")
        let s = try SecureStream.handshake(fd: fd, context: context, ring: ring, timeout: timeout, peer: peer, faults: faults)
        _ = stream.storeIfNil(s)
    }

    /// Closes the socket, once: later calls, and deinit, do nothing.
    package func close() {
        closed.withLock { done in
            guard !done else { return }
            done = true
            _ = Glibc.close(fd)
        }
    }

    /// Whether `close` has run.
    package var isClosed: Bool { closed.withLock { $0 } }

    /// Shuts the socket down (both ways by default), which wakes every thread blocked on it.
    /// Does nothing once the connection is closed.
    package func shutdown(_ how: Int32 = Int32(SHUT_RDWR)) {
        closed.withLock { done in
            if !done { _ = Glibc.shutdown(fd, how) }
        }
    }

    // MARK: The send funnel

    /// Sends all of `bytes`, through TLS when the connection has a stream: the one
    /// send-within-a-deadline path for frames, control replies, keepalives and farewells.
    ///
    /// Below it, `SocketSend.sendAll` retries EINTR, waits for POLLOUT on EAGAIN until the
    /// deadline (`timeout` after the last byte went out) and resumes short sends; `faults`, or
    /// the ring's injector, applies there. While the bytes go out `socketGuard` marks a frame
    /// in flight; a send that fails after part of the frame went out leaves the mark set for
    /// good: the stream is torn, and no keepalive or farewell may follow.
    /// - Parameters:
    ///   - timeout: how long the peer may leave the socket full. `.bestEffort` never waits.
    ///   - ring: the calling thread's ring (nil: `send(2)` on this thread). `.bestEffort` never
    ///     uses one (it runs on whichever thread aborts).
    ///   - mode: see `SendMode`.
    /// - Returns: false when `.ifRoom` or `.bestEffort` skipped the send (nothing went out).
    /// - Throws: `.socket(.timedOut)` when the peer left the socket full for `timeout`; the
    ///   socket's other errors; `.tls(reasons)`.
    /// - Warning: close the connection only after its channel, pacer and repliers are done:
    ///   only the farewell checks for a closed socket (the hot path takes no lock).
    @discardableResult
    package func send(_ bytes: UnsafeRawBufferPointer, timeout: Duration, ring: Ring? = nil,
                      mode: SendMode = .blocking) throws(ConnectionFailure) -> Bool {
        switch mode {
        case .blocking:
            return try transmit(bytes, timeout: timeout, ring: ring, marking: true)
        case .ifRoom:
            guard !socketGuard.midFrame, hasRoom(for: bytes.count + 64) else { return false }
            return try transmit(bytes, timeout: timeout, ring: ring, marking: true)
        case .bestEffort:
            // An abort may come after the session closed the socket, whose number may be
            // another socket's by then: checked under `closed`, held across a send that never
            // waits.
            return try closed.withLock { (done) throws(ConnectionFailure) -> Bool in
                guard !done, !socketGuard.midFrame else { return false }
                return try transmit(bytes, timeout: .zero, ring: nil, marking: false)
            }
        }
    }

    /// Sends through the stream or straight to `SocketSend`; with `marking`, `socketGuard` is set
    /// while the bytes go out, and stays set when the send failed after some of them went out.
    /// Without (a farewell), another thread's send on the stream is never waited for.
    private func transmit(_ bytes: UnsafeRawBufferPointer, timeout: Duration, ring: Ring?,
                          marking: Bool) throws(ConnectionFailure) -> Bool {
        if marking { socketGuard.setMidFrame(true) }
        let result: SecureStream.SendResult
        if let secure {
            result = secure.send(bytes, timeout: timeout, ring: ring, ifFree: !marking)
        } else {
            let o = SocketSend.sendAll(fd: fd, bytes, timeout: timeout, ring: ring, faults: faults)
            result = SecureStream.SendResult(wentOut: o.sent > 0, failure: o.error.map { .socket($0) })
        }
        if marking && (result.failure == nil || !result.wentOut) { socketGuard.setMidFrame(false) }
        if let failure = result.failure { throw failure }
        return !result.skipped
    }

    /// `send` for an array (control frames, keepalives, farewells).
    @discardableResult
    package func send(_ bytes: [UInt8], timeout: Duration, ring: Ring? = nil,
                      mode: SendMode = .blocking) throws(ConnectionFailure) -> Bool {
        var outcome: Result<Bool, ConnectionFailure> = .success(false)
        bytes.withUnsafeBytes { b in
            do throws(ConnectionFailure) { outcome = .success(try send(b, timeout: timeout, ring: ring, mode: mode)) } catch {
                outcome = .failure(error)
            }
        }
        return try outcome.get()
    }

    /// The keepalive frames the pacer sent on this connection (wire bytes the channel's own
    /// counters do not see: see `ChannelStats.wireBytes`).
    package var keepalivesSent: UInt64 { keepalives.load(ordering: .relaxed) }

    /// Counts a keepalive frame that went out whole.
    func countKeepalive() { keepalives.add(1, ordering: .relaxed) }

    /// Whether the socket's send buffer has at least `bytes` free (SO_SNDBUF less what is queued).
    func hasRoom(for bytes: Int) -> Bool {
        var size: Int32 = 0, queued: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, &len) == 0, ioctl(fd, UInt(TIOCOUTQ), &queued) == 0 else { return false }
        return Int(size) - Int(queued) >= bytes
    }

    /// Reads, without blocking, what the peer has already sent (through TLS when encrypted):
    /// for its `error` frame after a failed send.
    func readAvailable(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        if let secure { return secure.readAvailable(into: buffer) }
        return max(0, recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT)))
    }
}

// MARK: - The connection's parts

/// Who sends on one socket right now: the channel's own thread (a frame) or the keepalive
/// pacer, never both, so a keepalive never lands inside a frame.
package final class SendTurn: Sendable {
    private static let idle = 0, channel = 1, pacer = 2, retired = 3
    private let state = Atomic<Int>(0)
    /// CLOCK_MONOTONIC nanoseconds of the end of the last send on the socket.
    private let lastSend = Atomic<UInt64>(Monotonic.nanoseconds)
    package init() {}

    /// The channel's thread takes the socket for one frame (waits out a keepalive in flight:
    /// 40 bytes, non-blocking, so microseconds).
    func beginChannelSend() {
        while true {
            let s = state.load(ordering: .acquiring)
            if s == Self.retired || s == Self.channel { return }
            if s == Self.idle, state.compareExchange(expected: Self.idle, desired: Self.channel, ordering: .acquiring).exchanged { return }
            sched_yield()
        }
    }

    func endChannelSend() {
        lastSend.store(Monotonic.nanoseconds, ordering: .relaxed)
        _ = state.compareExchange(expected: Self.channel, desired: Self.idle, ordering: .releasing)
    }

    /// No keepalive after this (the channel sent its last data frame and its end).
    package func retire() {
        while true {
            let s = state.load(ordering: .acquiring)
            if s == Self.retired { return }
            if s != Self.pacer, state.compareExchange(expected: s, desired: Self.retired, ordering: .acquiringAndReleasing).exchanged { return }
            sched_yield()
        }
    }

    /// The pacer takes the socket if the channel is idle and has sent nothing for `idleNanos`.
    func tryBeginKeepalive(idleNanos: UInt64) -> Bool {
        guard Monotonic.nanoseconds &- lastSend.load(ordering: .relaxed) >= idleNanos else { return false }
        return state.compareExchange(expected: Self.idle, desired: Self.pacer, ordering: .acquiring).exchanged
    }

    func endKeepalive() {
        lastSend.store(Monotonic.nanoseconds, ordering: .relaxed)
        state.store(Self.idle, ordering: .releasing)
    }
}

/// Whether a frame is half sent on a connection (then no farewell may be sent: it would land
/// inside that frame). Set and cleared by `Connection.send`; a send that fails half way leaves
/// it set.
package final class SocketGuard: Sendable {
    private let sending = Atomic<Bool>(false)
    init() {}
    package var midFrame: Bool { sending.load(ordering: .acquiring) }
    package func setMidFrame(_ v: Bool) { sending.store(v, ordering: .releasing) }
}

extension ConnectionFailure {
    /// Why a send to `peer` ("the source") failed, in words a user can act on; a timeout says
    /// the peer has not read its socket for `timeout`.
    package func reason(peer: String, timeout: Duration) -> String {
        switch self {
        case .socket(let e) where e == .timedOut: "\(peer) has not read its socket for \(timeout)"
        case .socket(let e): "\(e)"
        case .tls(let r): "TLS failed (\(r))"
        }
    }

    /// As a transfer error on `channel`, `doing` what.
    func transferError(_ doing: String, channel: Int) -> TransferError {
        switch self {
        case .socket(let e): TransferError.network(e, doing, channel: channel)
        case .tls(let r): TransferError(.protocolViolation, "\(doing) on channel \(channel): TLS failed (\(r)); the stream was tampered with or the peer is broken")
        }
    }

    /// Like `transferError(_:channel:)`; a TLS alert from the peer (it refused this end's
    /// credentials after the handshake, as a TLS 1.3 server does with a client certificate)
    /// gets the same advice as a failed handshake.
    func transferError(_ doing: String, channel: Int, stream: SecureStream) -> TransferError {
        if case .tls(let r) = self, r.contains("alert") {
            let (why, hint) = stream.context.explain(r)
            return TransferError(.rejected, "\(doing) on channel \(channel): the peer ended the TLS session: \(why) (\(r))", hint: hint)
        }
        return transferError(doing, channel: channel)
    }
}

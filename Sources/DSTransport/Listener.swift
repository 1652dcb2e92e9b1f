import Glibc
import DSRing
import DSWire
import DSSupport

/// What the first valid preamble establishes.
public struct SessionInfo: Sendable {
    public var id: SessionID
    public var mode: TransferMode
    public var channelCount: Int
    public var chunkSize: Int
    public var totalSize: UInt64?
    public var features: FeatureBits
}

/// Accepts the N connections of one session on a listening socket, on its own thread and ring.
///
/// The first valid preamble establishes the session; later connections must carry the same
/// session id, channel count and chunk size and an unused channel index. Anything else is
/// answered with a `reject` frame and closed, and the session goes on. A first connection that
/// is not devstream at all (bad magic, garbage) fails the receive: it handles one transfer.
///
/// Preambles (and TLS handshakes) are read concurrently, one short-lived thread per connection
/// (at most `maxPending` at a time; more are closed at once with a warning), so a slow or
/// silent connection blocks no other. A connection that sends nothing — it closes at once (a
/// port probe) or stays silent past the preamble timeout — is dropped with a warning and does
/// not end the receive.
///
/// With TLS (`security`), each connection's handshake runs first and everything after it is
/// encrypted. Channel 0 must open the session; its connection's TLS exporter is the session
/// token, and every later channel must send that token after its preamble, so a peer that
/// holds valid credentials of its own cannot splice a connection into this session.
public final class SessionListener: @unchecked Sendable {
    // @unchecked: `joined`, `session`, `failure`, `stopping`, `streams`, `sessionToken`,
    // `pending`, `finished` are guarded by `lock`; the listening fd and `security` are immutable.
    public let fd: Int32
    public let port: UInt16
    public let endpoint: Endpoint
    private let lock = ConditionLock()
    private var session: SessionInfo?
    private var joined: [Int: Int32] = [:]
    private var failure: TransferError?
    private var stopping = false
    /// Whether `joined`'s sockets belong to the caller now (else `stop` closes them).
    private var handedOut = false
    private var thread: OSThread?
    private let timeout: Duration
    private let backend: IOBackendKind
    private let warn: @Sendable (String) -> Void
    /// Connections rejected so far (tests read it).
    public private(set) var rejectedCount = 0
    /// The server side's TLS context (nil: plaintext).
    private let security: SecurityContext?
    /// The joined channels' TLS streams, kept alive until the channels take them over.
    private var streams: [Int: SecureStream] = [:]
    /// The session token exported from channel 0's TLS connection.
    private var sessionToken: [UInt8]?
    /// The most connections whose preamble is read at once: a whole session's channels (which
    /// arrive together once channel 0 is accepted) and a few strangers besides.
    public static let maxPending = Int(WireLimits.maxChannels) + 16
    /// Connections whose preamble is being read, by id: the reading thread, and the socket while
    /// that thread still owns it (-1 once it closed it or handed it on).
    private var pending: [Int: (thread: OSThread?, fd: Int32)] = [:]
    /// Ids of preamble threads that are done (joined by the accept thread, or by `stop`).
    private var finished: [Int] = []
    private var nextPendingID = 0
    /// Channel indexes claimed by a connection whose `accept` is being sent.
    private var reserved: Set<Int> = []
    /// Connections whose preamble is being read now (tests read it).
    public var pendingCount: Int { lock.withLock { pending.count - finished.count } }
    /// Connections dropped so far for sending nothing, or for exceeding `maxPending`.
    public private(set) var droppedCount = 0

    /// Listens with `options`' timeout, backend and security; refuses plaintext on a
    /// non-loopback address unless `options.allowInsecure`.
    public convenience init(endpoint: Endpoint, options: TransferOptions,
                            warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        try options.checkPlaintext(endpoint)
        try self.init(endpoint: endpoint, timeout: options.timeout, backend: options.backend, security: options.security, warn: warn)
    }

    public init(endpoint: Endpoint, timeout: Duration, backend: IOBackendKind? = nil, security: SecurityOptions? = nil,
                warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        self.security = try security.map { (o) throws(TransferError) in try SecurityContext(o, server: true) }
        (fd, port) = try Sockets.listen(endpoint)
        self.endpoint = Endpoint(host: endpoint.host, port: port)
        self.timeout = timeout
        self.backend = backend ?? IOBackend.preferred
        self.warn = warn
    }

    deinit { stop(); close(fd) }

    /// Starts accepting on a background thread.
    public func start() {
        thread = OSThread { [self] in acceptLoop() }
    }

    /// Waits until every channel of the session has joined.
    /// - Returns: the session and the sockets by channel index.
    public func waitForSession(timeout: Duration?) throws(TransferError) -> (SessionInfo, [Int32]) {
        var result: (SessionInfo, [Int32])?
        var err: TransferError?
        lock.withLock {
            // First the session's first connection (as long as the caller likes), then the rest
            // of its channels within the stall timeout: a sender that connected one channel and
            // died must not wedge the receiver.
            var ok = lock.wait(until: { failure != nil || session != nil }, timeout: timeout)
            if ok && failure == nil {
                ok = lock.wait(until: {
                    failure != nil || (session.map { joined.count == $0.channelCount } ?? false)
                }, timeout: self.timeout)
            }
            if let f = failure { err = f; return }
            guard ok, let s = session else {
                err = TransferError(.timeout, session == nil
                    ? "no sender connected to \(endpoint) within the timeout"
                    : "only \(joined.count) of \(session!.channelCount) connections of the session arrived within the timeout")
                return
            }
            result = (s, (0..<s.channelCount).map { joined[$0]! })
            handedOut = true
        }
        if let err { throw err }
        return result!
    }

    /// Stops accepting and joins the threads. Idempotent.
    public func stop() {
        lock.withLock { stopping = true }
        shutdown(fd, Int32(SHUT_RDWR))
        thread?.join()
        thread = nil
        // Wake the preamble readers (their sockets, while they still own them) and join them.
        let readers = lock.withLock { () -> [OSThread] in
            for (_, p) in pending where p.fd >= 0 { shutdown(p.fd, Int32(SHUT_RDWR)) }
            defer { pending = [:]; finished = [] }
            return pending.values.compactMap(\.thread)
        }
        for t in readers { t.join() }
        let orphans = lock.withLock { () -> [Int32] in
            guard !handedOut else { return [] }
            defer { joined = [:] }
            return Array(joined.values)
        }
        for fd in orphans { close(fd) }
    }

    private func acceptLoop() {
        guard let ring = try? Ring(entries: 4, backend: backend) else {
            lock.withLock { failure = TransferError(.localIO, "cannot create an I/O ring for accepting"); lock.broadcast() }
            return
        }
        while !lock.withLock({ stopping }) {
            let conn: Int
            do { conn = try ring.perform(.accept(fd: fd)) } catch {
                if lock.withLock({ stopping }) { return }
                if error == .interrupted || error == .wouldBlock || error.rawValue == ECONNABORTED { continue }
                lock.withLock { failure = TransferError(.localIO, "accept on \(endpoint) failed: \(error)"); lock.broadcast() }
                return
            }
            admit(Int32(conn))
        }
    }

    /// Starts a preamble reader for `conn`, or closes it when `maxPending` are already waiting.
    private func admit(_ conn: Int32) {
        // Join the readers that are done (instant: they have returned).
        let done = lock.withLock { () -> [OSThread] in
            defer { finished = [] }
            return finished.compactMap { pending.removeValue(forKey: $0)?.thread }
        }
        for t in done { t.join() }
        let id = lock.withLock { () -> Int? in
            guard !stopping, pending.count < Self.maxPending else { return nil }
            defer { nextPendingID += 1 }
            pending[nextPendingID] = (nil, conn)
            return nextPendingID
        }
        guard let id else {
            let who = peerName(conn)
            close(conn)
            let stopping = lock.withLock { droppedCount += 1; return self.stopping }
            if !stopping {
                warn("warning: dropped a connection from \(PeerText.escape(who)): \(Self.maxPending) connections are already waiting to send their preamble")
            }
            return
        }
        let t = OSThread { [self] in
            let ring = (try? Ring(entries: 4, backend: backend)) ?? (try? Ring(entries: 4, backend: .blocking))
            if let ring { handle(conn, id: id, ring: ring) } else { release(id); close(conn) }
            lock.withLock { finished.append(id) }
        }
        lock.withLock { pending[id]?.thread = t }
    }

    /// The reader `id` no longer owns its socket (it closes it or hands it on right after).
    private func release(_ id: Int) {
        lock.withLock { pending[id]?.fd = -1 }
    }

    private func peerName(_ fd: Int32) -> String {
        var addr = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) } } == 0
        guard ok, addr.sin_family == sa_family_t(AF_INET) else { return "a peer" }
        var buf = [CChar](repeating: 0, count: 32)
        var a = addr.sin_addr
        inet_ntop(AF_INET, &a, &buf, 32)
        return "\(String(cString: buf)):\(UInt16(bigEndian: addr.sin_port))"
    }

    private func reject(_ conn: Int32, ring: Ring, _ message: String, stream: SecureStream? = nil) {
        let frame = ErrorMessage(code: 2, message: message).frame(type: .reject)
        if let stream {
            try? stream.send(frame, ring: ring, timeout: .seconds(2))
        } else {
            _ = try? frame.withUnsafeBytes { try ring.sendAll(fd: conn, $0, timeout: .seconds(2)) }
        }
        shutdown(conn, Int32(SHUT_WR))
        lock.withLock { rejectedCount += 1 }
    }

    /// A connection that is not a (matching) devstream sender: fails the receive if no session
    /// has started (it handles one transfer), else is logged and dropped.
    private func refuseStranger(_ conn: Int32, id: Int, _ message: String, code: TransferError.Code = .protocolViolation,
                                ring: Ring? = nil, tellPeer: Bool = false) {
        if tellPeer, let ring {
            // Said in plaintext: the peer speaks plaintext devstream. Read its preamble first:
            // closing with unread bytes would reset the connection before it reads the reason.
            var sink = [UInt8](repeating: 0, count: Preamble.size)
            _ = try? sink.withUnsafeMutableBytes { try ring.recvExactly(fd: conn, into: $0, timeout: .seconds(2)) }
            let frame = ErrorMessage(code: 2, message: message).frame(type: .reject)
            _ = try? frame.withUnsafeBytes { try ring.sendAll(fd: conn, $0, timeout: .seconds(2)) }
            shutdown(conn, Int32(SHUT_WR))
        }
        release(id)
        SecureStream.forget(conn)
        close(conn)
        let fatal = lock.withLock { () -> Bool in
            rejectedCount += 1
            guard session == nil, !stopping else { return false }
            failure = TransferError(code, message + "; no transfer took place")
            lock.broadcast()
            return true
        }
        if !fatal && !lock.withLock({ stopping }) { warn("warning: rejected \(message)") }
    }

    /// A connection that sent nothing at all (a port probe that closed, or one silent past the
    /// timeout): not a sender, so it is dropped with a warning and the listener goes on.
    private func dropSilent(_ conn: Int32, id: Int, who: String) {
        release(id)
        SecureStream.forget(conn)
        close(conn)
        let stopping = lock.withLock { droppedCount += 1; return self.stopping }
        if !stopping { warn("warning: dropped a connection from \(who) that sent nothing") }
    }

    /// What the first byte waiting on `conn` says (waiting up to `ms` for it): a plaintext
    /// preamble's `D`, anything else (a TLS record starts with 0x16), or nothing at all.
    private enum FirstByte { case plaintextPreamble, other, silent }
    private static func firstByte(_ conn: Int32, ms: Int32) -> FirstByte {
        var pfd = pollfd(fd: conn, events: Int16(POLLIN), revents: 0)
        var rc: Int32
        repeat { rc = poll(&pfd, 1, ms) } while rc < 0 && errno == EINTR
        guard rc > 0 else { return .silent }
        var first: UInt8 = 0
        let n = recv(conn, &first, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        guard n == 1 else { return .silent }  // closed (or reset) without a byte: a probe
        return first == Preamble.magic[0] ? .plaintextPreamble : .other
    }

    private func handle(_ conn: Int32, id: Int, ring: Ring) {
        Sockets.configure(conn)
        let who = peerName(conn)
        let wait = min(timeout, .seconds(10))
        var stream: SecureStream?
        if let security {
            switch Self.firstByte(conn, ms: Int32(wait.seconds * 1000)) {
            case .silent:
                dropSilent(conn, id: id, who: who)
                return
            case .other:
                break
            case .plaintextPreamble:
                refuseStranger(conn, id: id, "the sender at \(who) is not using TLS (a plaintext devstream sender); this receiver requires TLS: give the sender the same --psk-file or --tls-cert/--tls-key/--tls-ca options",
                               code: .rejected, ring: ring, tellPeer: true)
                return
            }
            do { stream = try SecureStream.handshake(fd: conn, context: security, ring: ring, timeout: wait, peer: who) } catch {
                refuseStranger(conn, id: id, error.message, code: error.code)
                return
            }
        }
        var buf = [UInt8](repeating: 0, count: Preamble.size)
        let n: Int
        if let stream {
            let got = (try? stream.receive(count: Preamble.size, ring: ring, timeout: wait)) ?? []
            buf.replaceSubrange(0..<got.count, with: got)
            n = got.count
        } else {
            n = (try? buf.withUnsafeMutableBytes { try ring.recvExactly(fd: conn, into: $0, timeout: wait) }) ?? 0
            if n == 0 {
                dropSilent(conn, id: id, who: who)
                return
            }
        }
        let preamble: Preamble
        do {
            guard n == Preamble.size else { throw WireError.truncatedPayload(needed: Preamble.size, remaining: n) }
            preamble = try buf.withUnsafeBytes { try Preamble.decode($0) }
        } catch {
            if stream == nil && n >= 3 && buf[0] == 0x16 && buf[1] == 0x03 {
                refuseStranger(conn, id: id, "the sender at \(who) speaks TLS, but this receiver has no TLS options: pass the sender's --psk-file, or --tls-cert/--tls-key/--tls-ca", code: .rejected)
            } else {
                refuseStranger(conn, id: id, "the connection from \(who) is not a devstream sender (\(error))")
            }
            return
        }
        // The session token (channels 1... of a TLS session), inside TLS right after the preamble.
        var token: [UInt8] = []
        if let stream, preamble.authLength > 0 {
            token = (try? stream.receive(count: Int(preamble.authLength), ring: ring, timeout: wait)) ?? []
            guard token.count == Int(preamble.authLength) else {
                refuseStranger(conn, id: id, "the connection from \(who) closed inside its session token")
                return
            }
        }
        var refusal: String?
        lock.withLock {
            if stream != nil && !preamble.features.contains(.tls) {
                refusal = "channel \(preamble.channelIndex) runs TLS but its preamble does not say so"
                return
            }
            if stream == nil && preamble.features.contains(.tls) {
                refusal = "channel \(preamble.channelIndex) announces TLS but arrived in plaintext"
                return
            }
            if session == nil, stream != nil, preamble.channelIndex != 0 {
                refusal = "channel \(preamble.channelIndex) arrived before channel 0, which opens a TLS session"
                return
            }
            if session == nil {
                sessionToken = stream?.token
                session = SessionInfo(id: preamble.sessionID, mode: preamble.mode, channelCount: Int(preamble.channelCount),
                                      chunkSize: Int(preamble.chunkSize),
                                      totalSize: preamble.totalSize == Preamble.unknownSize ? nil : preamble.totalSize,
                                      features: preamble.features)
            }
            let s = session!
            if preamble.sessionID != s.id {
                refusal = "the receiver is busy with another session (\(s.id)); this connection belongs to session \(preamble.sessionID)"
            } else if Int(preamble.channelCount) != s.channelCount || Int(preamble.chunkSize) != s.chunkSize
                        || preamble.mode != s.mode {
                refusal = "channel \(preamble.channelIndex) disagrees with the session's channel count, chunk size or mode"
            } else if joined[Int(preamble.channelIndex)] != nil || reserved.contains(Int(preamble.channelIndex)) {
                refusal = "channel \(preamble.channelIndex) of session \(s.id) has already joined"
            } else if joined.count + reserved.count == s.channelCount {
                refusal = "session \(s.id) is complete"
            } else if stream != nil, preamble.channelIndex != 0,
                      !constantTimeEqual(token, sessionToken ?? []) {
                refusal = "channel \(preamble.channelIndex) does not carry session \(s.id)'s token: it is not part of the TLS session that opened it on channel 0"
            }
            // Claimed now, under the lock: a second connection for the same channel is refused
            // even while this one's accept is still being sent.
            if refusal == nil { reserved.insert(Int(preamble.channelIndex)) }
        }
        if let refusal {
            warn("warning: rejected a connection from \(who): \(refusal)")
            reject(conn, ring: ring, refusal, stream: stream)
            release(id)
            SecureStream.forget(conn)
            close(conn)
            return
        }
        let frame = ErrorMessage.acceptFrame
        do {
            if let stream {
                try stream.send(frame, ring: ring, timeout: timeout)
            } else {
                try frame.withUnsafeBytes { try ring.sendAll(fd: conn, $0, timeout: timeout) }
            }
        } catch {
            lock.withLock { _ = reserved.remove(Int(preamble.channelIndex)) }
            release(id)
            SecureStream.forget(conn)
            close(conn)
            return
        }
        release(id)
        let keep = lock.withLock { () -> Bool in
            reserved.remove(Int(preamble.channelIndex))
            guard !stopping else { return false }
            joined[Int(preamble.channelIndex)] = conn
            if let stream { streams[Int(preamble.channelIndex)] = stream }
            lock.broadcast()
            return true
        }
        if !keep { SecureStream.forget(conn); close(conn) }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count, !a.isEmpty else { return false }
    var diff: UInt8 = 0
    for i in 0..<a.count { diff |= a[i] ^ b[i] }
    return diff == 0
}

import Glibc
import DSRing
import DSWire
import DSSupport

/// What the first valid preamble establishes.
package struct SessionInfo: Sendable {
    package var id: SessionID
    package var mode: TransferMode
    package var channelCount: Int
    package var chunkSize: Int
    package var totalSize: UInt64?
    package var features: FeatureBits
}

/// Accepts the N connections of one session on a listening socket, on its own thread and ring.
///
/// The first valid preamble establishes the session (with TLS: only from a connection that has
/// authenticated); later connections must carry the same session id, channel count and chunk
/// size and an unused channel index. Anything else is answered with a `reject` frame and
/// closed, and the session goes on. Nothing a connection does before it has opened the
/// session ends the receive: a stranger (garbage, an HTTP request, half a handshake, a wrong
/// key, a plaintext sender to a TLS receiver, a replayed channel) is turned away with a warning,
/// and the listener waits on for its sender; if none comes, `waitForSession`'s timeout error
/// says what was turned away.
///
/// Admission (`AdmissionPolicy`, with `AdmissionLimits`): preambles (and TLS handshakes) are
/// read concurrently, one short-lived thread per connection, so a slow or silent connection
/// blocks no other. Each connection has one deadline for its whole pre-authentication phase
/// (handshake and preamble), enforced by the `ds-admission` thread, which cuts it off however
/// the peer paces its bytes. At most `maxPending` connections wait at once, `maxPerAddress` of
/// them from one address; to make room for a newcomer the oldest unauthenticated waiting
/// connection is shed, so idle or trickling connections cannot keep out a peer with the key.
/// A connection turned away for admission (shed, refused, or past its deadline) is reset
/// (RST), which its sender reports as such, not as a credentials problem.
///
/// With TLS (`security`), each connection's handshake runs first and everything after it is
/// encrypted. Channel 0 must open the session; its connection's TLS exporter is the session
/// token, and every later channel must send that token after its preamble, so a peer that
/// holds valid credentials of its own cannot splice a connection into this session.
///
/// This file holds the listener's life (accepting, the reader threads, handing the session
/// out, stopping); `Listener+Joining.swift` what happens to one connection (TLS, preamble,
/// token, the session's checks, and turning strangers away).
package final class SessionListener: @unchecked Sendable {
    // @unchecked: `joined`, `session`, `failure`, `stopping`, `handedOut`, `sessionToken`,
    // `pending`, `finished`, `reserved`, `admission`, `admissionChanges`, `lastTurnedAway` and
    // the counters are guarded by `lock`; the listening fd, `security`, `timeout`, `limits`,
    // `backend` and `warn` are immutable. (Internal, not private: the
    // joining half in `Listener+Joining.swift` uses them.)
    package let fd: Int32
    package let port: UInt16
    package let endpoint: Endpoint
    let lock = ConditionLock()
    var session: SessionInfo?
    var joined: [Int: Connection] = [:]
    var failure: TransferError?
    var stopping = false
    /// Whether `joined`'s connections belong to the caller now (else `stop` closes them).
    private var handedOut = false
    private var thread: OSThread?
    /// The `ds-admission` thread: expires connections past their deadline.
    private var reaper: OSThread?
    /// Sockets the caller connected and handed in (no listening socket: `fd` is -1); `start`
    /// admits them as if accepted.
    private var adopted: [Connection] = []
    let timeout: Duration
    private let backend: IOBackendKind
    let warn: @Sendable (String) -> Void
    /// Connections rejected or turned away so far, for what they sent (tests read it).
    /// (Read under `lock`: tests read it from their own thread.)
    package var rejectedCount: Int { lock.withLock { rejected } }
    var rejected = 0
    /// The last connection turned away before a session opened, and why (for the timeout error).
    var lastTurnedAway: (message: String, hint: String?)?
    /// The server side's TLS context (nil: plaintext).
    let security: SecurityContext?
    /// The session token exported from channel 0's TLS connection.
    var sessionToken: [UInt8]?
    /// How many connections may wait, and for how long.
    package let limits: AdmissionLimits
    /// The most a session's buffers may take here: a sender whose preamble asks for more (its
    /// channel count times its chunk size) is refused before anything is allocated.
    package let memoryBudget: Int
    /// Who waits for admission now (the policy; its ids are `pending`'s).
    private var admission: AdmissionPolicy
    /// Bumped whenever `admission` gains a connection (wakes the reaper to its new deadline).
    private var admissionChanges = 0
    /// Connections whose preamble is being read, by id: the reading thread, the connection while
    /// that thread still owns it (nil once it closed it or handed it on), and why admission
    /// turned it away, once it did (shed or past its deadline: its reader then closes it).
    private var pending: [Int: (thread: OSThread?, connection: Connection?, turnedAway: String?)] = [:]
    /// Ids of preamble threads that are done (joined by the accept thread, or by `stop`).
    private var finished: [Int] = []
    private var nextPendingID = 0
    /// Channel indexes claimed by a connection whose `accept` is being sent.
    var reserved: Set<Int> = []
    /// Connections whose preamble is being read now (tests read it).
    package var pendingCount: Int { lock.withLock { pending.count - finished.count } }
    /// Of the connections waiting for admission, those that have authenticated (tests read it:
    /// a client's TLS handshake returns before the server has processed its Finished).
    package var authenticatedCount: Int { lock.withLock { admission.authenticatedCount } }
    /// Connections dropped so far for sending nothing, or by admission (shed, refused, late).
    package var droppedCount: Int { lock.withLock { dropped } }
    var dropped = 0
    /// Of those, the ones admission shed, refused or cut off at their deadline.
    package var admissionDropCount: Int { lock.withLock { admissionDropped } }
    var admissionDropped = 0

    /// Listens with `options`' timeout, backend and security; refuses to listen without
    /// security options unless `options.allowInsecure` (`TransferOptions.checkPlaintext`).
    package convenience init(endpoint: Endpoint, options: TransferOptions, limits: AdmissionLimits? = nil,
                            warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        try options.checkPlaintext(endpoint)
        try self.init(endpoint: endpoint, timeout: options.timeout, backend: options.backend, security: options.security,
                      limits: limits, memoryBudget: options.memoryBudget, warn: warn)
    }

    package init(endpoint: Endpoint, timeout: Duration, backend: IOBackendKind? = nil, security: SecurityOptions? = nil,
                limits: AdmissionLimits? = nil, memoryBudget: Int = TransferOptions().memoryBudget,
                warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        self.memoryBudget = memoryBudget
        self.security = try security.map { (o) throws(TransferError) in try SecurityContext(o, server: true) }
        (fd, port) = try Sockets.listen(endpoint)
        self.endpoint = Endpoint(host: endpoint.host, port: port)
        self.timeout = timeout
        self.limits = limits ?? .standard(timeout: timeout)
        admission = AdmissionPolicy(limits: self.limits)
        // The session that uses this listener warns about a fallback (`IOBackend.resolve`).
        self.backend = backend ?? IOBackend.probed
        self.warn = warn
    }

    /// A listener over sockets the caller already holds, one per channel of the session it
    /// expects (the sender's channel 0 must be among them). It takes them: they are closed with
    /// the session's connections, or by `stop` when no session took them. Without security
    /// options each must be a Unix socket whose peer runs as this user (`Sockets.checkAdopted`),
    /// unless `options.allowInsecure`.
    package init(adopting fds: [Int32], options: TransferOptions,
                warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        let connections = fds.map { Connection(fd: $0) }
        do {
            try Sockets.checkAdopted(fds, count: fds.count, options: options)
            self.security = try options.security.map { (o) throws(TransferError) in try SecurityContext(o, server: true) }
        } catch {
            for c in connections { c.close() }
            throw error
        }
        guard !fds.isEmpty else { throw TransferError(.usage, "no sockets were handed in", hint: "hand in one connected socket per connection") }
        for fd in fds { Sockets.configure(fd) }
        fd = -1
        port = 0
        endpoint = Endpoint(host: "sockets handed in", port: 0)
        timeout = options.timeout
        memoryBudget = options.memoryBudget
        limits = .standard(timeout: options.timeout)
        admission = AdmissionPolicy(limits: limits)
        backend = options.backend ?? IOBackend.probed
        self.warn = warn
        adopted = connections
    }

    deinit { stop(); if fd >= 0 { close(fd) } }

    /// Starts accepting on a background thread, `ds-accept` (or admits the handed-in sockets);
    /// each connection's preamble is read on a short-lived thread of its own, `ds-preamble`.
    /// - Throws: `.localIO` when the thread cannot be started.
    package func start() throws(TransferError) {
        do { reaper = try OSThread(name: "ds-admission") { [self] in expireLoop() } } catch {
            throw .threadStart(error, "ds-admission", doing: "timing the admission of connections on \(endpoint)")
        }
        if fd < 0 {
            for c in lock.withLock({ defer { adopted = [] }; return adopted }) { admit(c) }
            return
        }
        do { thread = try OSThread(name: "ds-accept") { [self] in acceptLoop() } } catch {
            throw .threadStart(error, "ds-accept", doing: "accepting connections on \(endpoint)")
        }
    }

    /// Waits until every channel of the session has joined.
    /// - Returns: the session and its connections by channel index (the caller closes them).
    package func waitForSession(timeout: Duration?) throws(TransferError) -> (SessionInfo, [Connection]) {
        var result: (SessionInfo, [Connection])?
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
                if session == nil {
                    var message = "no sender connected to \(endpoint) within the timeout"
                    if let last = lastTurnedAway {
                        message += "; \(rejected) connection(s) were turned away, the last because \(last.message)"
                    }
                    err = TransferError(.timeout, message, hint: lastTurnedAway?.hint)
                } else {
                    err = TransferError(.timeout, "only \(joined.count) of \(session!.channelCount) connections of the session arrived within the timeout")
                }
                return
            }
            result = (s, (0..<s.channelCount).map { joined[$0]! })
            handedOut = true
        }
        if let err { throw err }
        return result!
    }

    /// Ends a `waitForSession` now with `error` (the caller cancelled); later waits fail too.
    package func fail(_ error: TransferError) {
        lock.withLock { if failure == nil { failure = error }; lock.broadcast() }
    }

    /// Stops accepting and joins the threads. Idempotent.
    package func stop() {
        lock.withLock { stopping = true; lock.broadcast() }
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
        for c in lock.withLock({ defer { adopted = [] }; return adopted }) { c.close() }
        thread?.join()
        thread = nil
        reaper?.join()
        reaper = nil
        // Wake the preamble readers (their connections, while they still own them) and join them.
        let readers = lock.withLock { () -> [OSThread] in
            for (_, p) in pending { p.connection?.shutdown() }
            defer { pending = [:]; finished = [] }
            return pending.values.compactMap(\.thread)
        }
        for t in readers { t.join() }
        let orphans = lock.withLock { () -> [Connection] in
            guard !handedOut else { return [] }
            defer { joined = [:] }
            return Array(joined.values)
        }
        for c in orphans { c.close() }
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
            admit(Connection(fd: Int32(conn)))
        }
    }

    /// Starts a preamble reader for `conn` if admission lets it wait (shedding older
    /// unauthenticated connections to make room), or resets it.
    private func admit(_ conn: Connection) {
        // Join the readers that are done (instant: they have returned).
        let done = lock.withLock { () -> [OSThread] in
            defer { finished = [] }
            return finished.compactMap { pending.removeValue(forKey: $0)?.thread }
        }
        for t in done { t.join() }
        let address = Self.peerAddress(conn.fd)
        var refusal: String?
        let id = lock.withLock { () -> Int? in
            guard !stopping else { refusal = ""; return nil }
            let id = nextPendingID
            switch admission.admit(id, from: address, now: Monotonic.now) {
            case .refuse(let why):
                refusal = why
                return nil
            case .admit(let shed):
                for victim in shed {
                    turnAwayLocked(victim, "it was shed to make room for a newer connection: \(limits.maxPending) connections (\(limits.maxPerAddress) per address) may wait to authenticate")
                }
            }
            nextPendingID += 1
            admissionChanges += 1
            pending[id] = (nil, conn, nil)
            lock.broadcast()
            return id
        }
        guard let id else {
            let who = Self.peerName(conn.fd)
            // Counted before the reset: whoever sees the reset (the turned-away sender, a test)
            // sees the count too.
            let stopping = lock.withLock { () -> Bool in
                if !self.stopping { dropped += 1; admissionDropped += 1 }
                return self.stopping
            }
            Self.reset(conn)
            if !stopping, let refusal {
                warn("warning: dropped a connection from \(PeerText.escape(who)): \(refusal)")
            }
            return
        }
        let t: OSThread
        do {
            t = try OSThread(name: "ds-preamble") { [self] in
                let ring = (try? Ring(entries: 4, backend: backend)) ?? (try? Ring(entries: 4, backend: .blocking))
                if let ring { handle(conn, id: id, ring: ring) } else { release(id); conn.close() }
                lock.withLock { finished.append(id) }
            }
        } catch {
            // Out of threads: this connection is dropped like one admission refused; the
            // listener goes on (a sender whose channel this was sees it reset).
            let who = Self.peerName(conn.fd)
            let stopping = lock.withLock { () -> Bool in
                pending.removeValue(forKey: id)
                admission.remove(id)
                dropped += 1
                return self.stopping
            }
            Self.reset(conn)
            if !stopping {
                warn("warning: dropped a connection from \(PeerText.escape(who)): cannot start a thread to read its preamble (pthread_create: \(error)); the process is out of threads or memory")
            }
            return
        }
        lock.withLock { pending[id]?.thread = t }
    }

    /// Marks waiting connection `id` turned away by admission and wakes its reader (a read
    /// shutdown: its blocked receive returns, nothing is sent to the peer), which then resets
    /// the connection. Call with `lock` held.
    private func turnAwayLocked(_ id: Int, _ why: String) {
        admission.remove(id)
        guard pending[id] != nil, pending[id]?.turnedAway == nil else { return }
        pending[id]?.turnedAway = why
        pending[id]?.connection?.shutdown(Int32(SHUT_RD))
    }

    /// Why admission turned the connection of reader `id` away (nil: it did not).
    func turnedAway(_ id: Int) -> String? { lock.withLock { pending[id]?.turnedAway } }

    /// `turnedAway` with `lock` held.
    func turnedAwayLocked(_ id: Int) -> Bool { pending[id]?.turnedAway != nil }

    /// Reader `id`'s connection is claimed by the session: no shedding or deadline applies to
    /// it now. Call with `lock` held.
    func leaveAdmissionLocked(_ id: Int) { admission.remove(id) }

    /// The reader `id` proved the peer's key or certificate: it is not shed for room any more.
    func authenticated(_ id: Int) { lock.withLock { admission.authenticated(id) } }

    /// The `ds-admission` thread: cuts off each waiting connection at its deadline.
    private func expireLoop() {
        lock.withLock {
            while !stopping {
                let seen = admissionChanges
                let wait = admission.nextDeadline.map { max($0 - Monotonic.now, .zero) }
                _ = lock.wait(until: { stopping || admissionChanges != seen }, timeout: wait)
                for id in admission.expire(now: Monotonic.now) {
                    turnAwayLocked(id, "it did not authenticate and send its preamble within \(limits.deadline) of connecting")
                }
            }
        }
    }

    /// Closes `conn` with a reset (RST, not FIN): what a sender sees when admission turned its
    /// connection away, which it reports as such.
    static func reset(_ conn: Connection) {
        var lin = linger(l_onoff: 1, l_linger: 0)
        setsockopt(conn.fd, SOL_SOCKET, SO_LINGER, &lin, socklen_t(MemoryLayout<linger>.size))
        conn.close()
    }

    /// The reader `id` no longer owns its connection (it closes it or hands it on right after).
    func release(_ id: Int) {
        lock.withLock {
            pending[id]?.connection = nil
            admission.remove(id)
        }
    }

    /// Hands a connection that joined the session to `waitForSession`; false when the
    /// listener is stopping (the caller closes it then).
    func join(_ conn: Connection, channel: Int) -> Bool {
        lock.withLock { () -> Bool in
            reserved.remove(channel)
            guard !stopping else { return false }
            joined[channel] = conn
            lock.broadcast()
            return true
        }
    }
}

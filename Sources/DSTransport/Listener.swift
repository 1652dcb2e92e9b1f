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
///
/// This file holds the listener's life (accepting, the reader threads, handing the session
/// out, stopping); `Listener+Joining.swift` what happens to one connection (TLS, preamble,
/// token, the session's checks, and turning strangers away).
package final class SessionListener: @unchecked Sendable {
    // @unchecked: `joined`, `session`, `failure`, `stopping`, `handedOut`, `sessionToken`,
    // `pending`, `finished`, `reserved` and the counters (`rejected`, `dropped`) are guarded by `lock`; the listening fd,
    // `security`, `timeout`, `backend` and `warn` are immutable. (Internal, not private: the
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
    /// Sockets the caller connected and handed in (no listening socket: `fd` is -1); `start`
    /// admits them as if accepted.
    private var adopted: [Connection] = []
    let timeout: Duration
    private let backend: IOBackendKind
    let warn: @Sendable (String) -> Void
    /// Connections rejected so far (tests read it, from their own thread: under `lock`).
    package var rejectedCount: Int { lock.withLock { rejected } }
    var rejected = 0
    /// The server side's TLS context (nil: plaintext).
    let security: SecurityContext?
    /// The session token exported from channel 0's TLS connection.
    var sessionToken: [UInt8]?
    /// The most connections whose preamble is read at once: a whole session's channels (which
    /// arrive together once channel 0 is accepted) and a few strangers besides.
    package static let maxPending = Int(WireLimits.maxChannels) + 16
    /// Connections whose preamble is being read, by id: the reading thread, and the connection
    /// while that thread still owns it (nil once it closed it or handed it on).
    private var pending: [Int: (thread: OSThread?, connection: Connection?)] = [:]
    /// Ids of preamble threads that are done (joined by the accept thread, or by `stop`).
    private var finished: [Int] = []
    private var nextPendingID = 0
    /// Channel indexes claimed by a connection whose `accept` is being sent.
    var reserved: Set<Int> = []
    /// Connections whose preamble is being read now (tests read it).
    package var pendingCount: Int { lock.withLock { pending.count - finished.count } }
    /// Connections dropped so far for sending nothing, or for exceeding `maxPending` (read
    /// under `lock`).
    package var droppedCount: Int { lock.withLock { dropped } }
    var dropped = 0

    /// Listens with `options`' timeout, backend and security; refuses to listen without
    /// security options unless `options.allowInsecure` (`TransferOptions.checkPlaintext`).
    package convenience init(endpoint: Endpoint, options: TransferOptions,
                            warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        try options.checkPlaintext(endpoint)
        try self.init(endpoint: endpoint, timeout: options.timeout, backend: options.backend, security: options.security, warn: warn)
    }

    package init(endpoint: Endpoint, timeout: Duration, backend: IOBackendKind? = nil, security: SecurityOptions? = nil,
                warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        self.security = try security.map { (o) throws(TransferError) in try SecurityContext(o, server: true) }
        (fd, port) = try Sockets.listen(endpoint)
        self.endpoint = Endpoint(host: endpoint.host, port: port)
        self.timeout = timeout
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
        backend = options.backend ?? IOBackend.probed
        self.warn = warn
        adopted = connections
    }

    deinit { stop(); if fd >= 0 { close(fd) } }

    /// Starts accepting on a background thread, `ds-accept` (or admits the handed-in sockets);
    /// each connection's preamble is read on a short-lived thread of its own, `ds-preamble`.
    /// - Throws: `.localIO` when the thread cannot be started.
    package func start() throws(TransferError) {
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

    /// Ends a `waitForSession` now with `error` (the caller cancelled); later waits fail too.
    package func fail(_ error: TransferError) {
        lock.withLock { if failure == nil { failure = error }; lock.broadcast() }
    }

    /// Stops accepting and joins the threads. Idempotent.
    package func stop() {
        lock.withLock { stopping = true }
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
        for c in lock.withLock({ defer { adopted = [] }; return adopted }) { c.close() }
        thread?.join()
        thread = nil
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

    /// Starts a preamble reader for `conn`, or closes it when `maxPending` are already waiting.
    private func admit(_ conn: Connection) {
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
            let who = Self.peerName(conn.fd)
            conn.close()
            let stopping = lock.withLock { dropped += 1; return self.stopping }
            if !stopping {
                warn("warning: dropped a connection from \(PeerText.escape(who)): \(Self.maxPending) connections are already waiting to send their preamble")
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
            // Out of threads: this connection is dropped like one over `maxPending`; the
            // listener goes on (a sender whose channel this was sees it closed).
            let who = Self.peerName(conn.fd)
            let stopping = lock.withLock { () -> Bool in
                pending.removeValue(forKey: id)
                dropped += 1
                return self.stopping
            }
            conn.close()
            if !stopping {
                warn("warning: dropped a connection from \(PeerText.escape(who)): cannot start a thread to read its preamble (pthread_create: \(error)); the process is out of threads or memory")
            }
            return
        }
        lock.withLock { pending[id]?.thread = t }
    }

    /// The reader `id` no longer owns its connection (it closes it or hands it on right after).
    func release(_ id: Int) {
        lock.withLock { pending[id]?.connection = nil }
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

import Glibc
import DSRing
import DSWire

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
/// Preambles are read concurrently, one short-lived thread per connection (at most
/// `maxPending` at a time; more are closed at once with a warning), so a slow or silent
/// connection blocks no other. A connection that sends nothing — it closes at once (a port
/// probe) or stays silent past the preamble timeout — is dropped with a warning and does not end
/// the receive.
public final class SessionListener: @unchecked Sendable {
    // @unchecked: `joined`, `session`, `failure`, `stopping`, `pending`, `finished` are guarded by
    // `lock`; the listening fd is immutable.
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
    /// The most connections whose preamble is read at once.
    public static let maxPending = 16
    /// Connections whose preamble is being read, by id: the reading thread, and the socket while
    /// that thread still owns it (-1 once it closed it or handed it on).
    private var pending: [Int: (thread: OSThread?, fd: Int32)] = [:]
    /// Ids of preamble threads that are done (joined by the accept thread, or by `stop`).
    private var finished: [Int] = []
    private var nextPendingID = 0
    /// Connections whose preamble is being read now (tests read it).
    public var pendingCount: Int { lock.withLock { pending.count - finished.count } }
    /// Connections dropped so far for sending nothing, or for exceeding `maxPending`.
    public private(set) var droppedCount = 0

    public init(endpoint: Endpoint, timeout: Duration, backend: IOBackendKind? = nil,
                warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
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

    private func reject(_ conn: Int32, ring: Ring, _ message: String) {
        let frame = ErrorMessage(code: 2, message: message).frame(type: .reject)
        _ = try? frame.withUnsafeBytes { try ring.sendAll(fd: conn, $0, timeout: .seconds(2)) }
        shutdown(conn, Int32(SHUT_WR))
        lock.withLock { rejectedCount += 1 }
    }

    private func handle(_ conn: Int32, id: Int, ring: Ring) {
        Sockets.configure(conn)
        let who = peerName(conn)
        var buf = [UInt8](repeating: 0, count: Preamble.size)
        let n = (try? buf.withUnsafeMutableBytes { try ring.recvExactly(fd: conn, into: $0, timeout: min(timeout, .seconds(10))) }) ?? 0
        if n == 0 {
            // Nothing at all: a port probe that closed, or a connection silent past the timeout.
            // Not a sender: drop it and keep listening.
            release(id)
            close(conn)
            let stopping = lock.withLock { droppedCount += 1; return self.stopping }
            if !stopping { warn("warning: dropped a connection from \(who) that sent nothing") }
            return
        }
        let preamble: Preamble
        do {
            guard n == Preamble.size else { throw WireError.truncatedPayload(needed: Preamble.size, remaining: n) }
            preamble = try buf.withUnsafeBytes { try Preamble.decode($0) }
        } catch {
            release(id)
            close(conn)
            let message = "the connection from \(who) is not a devstream sender (\(error))"
            let fatal = lock.withLock { () -> Bool in
                rejectedCount += 1
                guard session == nil, !stopping else { return false }
                failure = TransferError(.protocolViolation, message + "; no transfer took place")
                lock.broadcast()
                return true
            }
            if !fatal { warn("warning: rejected \(message)") }
            return
        }
        var refusal: String?
        lock.withLock {
            if session == nil {
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
            } else if joined[Int(preamble.channelIndex)] != nil {
                refusal = "channel \(preamble.channelIndex) of session \(s.id) has already joined"
            } else if joined.count == s.channelCount {
                refusal = "session \(s.id) is complete"
            }
        }
        if let refusal {
            warn("warning: rejected a connection from \(who): \(refusal)")
            reject(conn, ring: ring, refusal)
            release(id)
            close(conn)
            return
        }
        let frame = ErrorMessage.acceptFrame
        do { try frame.withUnsafeBytes { try ring.sendAll(fd: conn, $0, timeout: timeout) } } catch {
            release(id)
            close(conn)
            return
        }
        release(id)
        let keep = lock.withLock { () -> Bool in
            guard !stopping else { return false }
            joined[Int(preamble.channelIndex)] = conn
            lock.broadcast()
            return true
        }
        if !keep { close(conn) }
    }
}

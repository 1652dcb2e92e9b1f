import Glibc
import Synchronization
import DSRing
import DSWire
import DSSupport

/// Opens the N channels of a session, one `WorkerGroup` thread each: shared by point-to-point
/// transfers and migrations.
package enum ChannelSet {
    /// Sender side: each thread makes its ring, connects, sends its preamble and waits for the
    /// receiver's `accept`. The caller closes `connections` (indexed by channel) after shutting
    /// the group down. Each connection is watched by `abort`.
    ///
    /// Channel 0 goes first: channels 1... connect only once channel 0 is accepted (one round
    /// trip more at setup), so a receiver that refuses the session says why on channel 0, and
    /// the others never race it. With TLS (`options.security`) each connection handshakes before
    /// its preamble, and channels 1... send channel 0's session token (the TLS exporter of
    /// channel 0's connection) after their preamble, which binds them to that authenticated
    /// session. A session without security options is refused unless `options.allowInsecure`.
    /// Every channel's ring runs on `backend` (the session's: `IOBackend.resolve`). The threads
    /// are named `ds-send-N` (`ds-recv-N` for `serve`).
    package static func connect(to endpoint: Endpoint, options: TransferOptions, mode: TransferMode, totalSize: UInt64?,
                               abort: AbortSignal, backend: IOBackendKind,
                               warn: @escaping @Sendable (String) -> Void) throws(TransferError) -> (group: WorkerGroup<Channel>, connections: [Connection]) {
        try options.checkPlaintext(endpoint)
        return try open(peer: "\(endpoint)", options: options, mode: mode, totalSize: totalSize, abort: abort, backend: backend,
                        warn: warn) { (_, ring) throws(TransferError) in
            Connection(fd: try Sockets.connect(endpoint, ring: ring, timeout: options.timeout))
        }
    }

    /// Sender side over sockets the caller already connected, one per channel (channel 0
    /// first). The session takes them: they are closed with the connections, or here on failure.
    /// Without security options each must be a Unix socket whose peer runs as this user, unless
    /// `options.allowInsecure` (`Sockets.checkAdopted`).
    package static func connect(adopting fds: [Int32], options: TransferOptions, mode: TransferMode, totalSize: UInt64?,
                               abort: AbortSignal, backend: IOBackendKind,
                               warn: @escaping @Sendable (String) -> Void) throws(TransferError) -> (group: WorkerGroup<Channel>, connections: [Connection]) {
        let adopted = fds.map { Connection(fd: $0) }
        do {
            try Sockets.checkAdopted(fds, count: options.connections, options: options)
            for fd in fds { Sockets.configure(fd) }
            return try open(peer: "the destination (a socket handed in)", options: options, mode: mode, totalSize: totalSize,
                            abort: abort, backend: backend, warn: warn) { (i, _) throws(TransferError) in adopted[i] }
        } catch {
            for c in adopted { c.close() }
            throw error
        }
    }

    /// Opens the channels, each on the connection `connect(i, ring)` makes or hands over.
    private static func open(peer endpoint: String, options: TransferOptions, mode: TransferMode, totalSize: UInt64?,
                             abort: AbortSignal, backend: IOBackendKind, warn: @escaping @Sendable (String) -> Void,
                             connect: @escaping (Int, Ring) throws(TransferError) -> Connection) throws(TransferError) -> (group: WorkerGroup<Channel>, connections: [Connection]) {
        let security = try options.security.map { (o) throws(TransferError) in try SecurityContext(o, server: false) }
        let session = SessionID.random()
        let n = options.connections
        var features: FeatureBits = [.xxh3]
        if options.compression { features.insert(.lz4) }
        if security != nil { features.insert(.tls) }
        let token = TokenBox()
        abort.onAbort { token.wake() }
        // By channel index (not connection order): channel 0 carries the control frames.
        let connections = Mutex<[Connection?]>([Connection?](repeating: nil, count: n))
        do {
            let group = try WorkerGroup<Channel>(count: n, name: "ds-send", abort: abort) { (i) throws(TransferError) in
                let ring: Ring
                // 64 entries: a pages frame's extent reads go 64 to a submission (`readBatch`).
                do { ring = try Ring(entries: Channel.ringEntries, backend: backend) } catch {
                    throw TransferError(.localIO, "cannot create an I/O ring: \(error)")
                }
                var preamble = Preamble(features: features, sessionID: session, channelIndex: UInt16(i), channelCount: UInt16(n),
                                        chunkSize: UInt32(options.chunkSize), mode: mode, totalSize: totalSize ?? Preamble.unknownSize)
                var bytes: [UInt8] = []
                if security != nil { preamble.authMethod = Preamble.authSessionToken }
                if i > 0 {
                    // Channel 0 opens the session; the others follow once it is accepted.
                    guard let t = token.wait(abort) else {
                        throw TransferError(.aborted, "channel \(i) did not start: channel 0 failed")
                    }
                    if security != nil {
                        preamble.authLength = UInt16(t.count)
                        bytes = t
                    }
                }
                bytes = preamble.encoded() + bytes
                let connection = try connect(i, ring)
                connections.withLock { $0[i] = connection }
                abort.watch(connection)
                if let security {
                    try connection.startTLS(security, ring: ring, timeout: options.timeout, peer: "\(endpoint) (channel \(i))")
                }
                let ch = try Channel(index: i, connection: connection, ring: ring, chunkSize: options.chunkSize, compression: options.compression,
                                 acceleration: options.acceleration, timeout: options.timeout, warn: i == 0 ? warn : { _ in })
                let reply: ReceivedFrame
                do throws(TransferError) {
                    try ch.sendBytes(bytes, doing: "sending the preamble")
                    reply = try ch.receive()
                } catch where error.code == .peerClosed {
                    // A receiver says `reject` to a sender it refuses; one that hangs up (or
                    // resets) without a word could not admit the connection, or went away.
                    throw TransferError(.rejected, "the receiver at \(endpoint) closed channel \(i) before accepting it (\(error.message)): it turns away connections it cannot admit (too many waiting to authenticate, or not done within its admission deadline) and, if it runs an older devstream release, senders of another wire version (its log says so), or it went away. Retry, check what else connects to the receiver, and run the same devstream release at both ends")
                }
                guard reply.header.type == .accept else {
                    if reply.header.type == .reject, let m = try? ErrorMessage.decode(reply.control) {
                        throw TransferError(.rejected, "the receiver at \(endpoint) rejected the connection: \(m.message)")
                    }
                    throw Channel.unexpected(reply, expecting: "accept", channel: i)
                }
                if i == 0 { token.publish(connection.secure?.token ?? []) }
                // Wire bytes count the session's frames from here on: the receiver never sees
                // its listener's admission (the preamble and this accept) on a channel, so
                // neither end counts them (see `ChannelStats.wireBytes`).
                ch.stats.wireBytes = 0
                return ch
            }
            return (group, connections.withLock { $0.map { $0! } })
        } catch {
            for c in connections.withLock({ $0 }) { c?.close() }
            throw error
        }
    }

    /// Receiver side: one thread per accepted connection, each with its ring and channel. Each
    /// connection is watched by `abort`; the caller closes them.
    package static func serve(_ session: SessionInfo, connections: [Connection], options: TransferOptions, abort: AbortSignal,
                             backend: IOBackendKind, warn: @escaping @Sendable (String) -> Void) throws(TransferError) -> WorkerGroup<Channel> {
        for c in connections { abort.watch(c) }
        return try WorkerGroup<Channel>(count: session.channelCount, name: "ds-recv", abort: abort) { (i) throws(TransferError) in
            let ring: Ring
            do { ring = try Ring(entries: Channel.ringEntries, backend: backend) } catch {
                throw TransferError(.localIO, "cannot create an I/O ring: \(error)")
            }
            return try Channel(index: i, connection: connections[i], ring: ring, chunkSize: session.chunkSize, compression: false,
                           acceleration: 1, timeout: options.timeout, warn: i == 0 ? warn : { _ in })
        }
    }
}

/// Channel 0's acceptance, with its session token (empty without TLS), handed to the other
/// channels.
private final class TokenBox: @unchecked Sendable {
    // @unchecked: `token` and `woken` are guarded by `lock`.
    private let lock = ConditionLock()
    private var token: [UInt8]?
    private var woken = false

    func publish(_ t: [UInt8]) { lock.withLock { token = t; lock.broadcast() } }
    func wake() { lock.withLock { woken = true; lock.broadcast() } }

    /// Waits for the token; nil when the session aborted first.
    func wait(_ abort: AbortSignal) -> [UInt8]? {
        lock.withLock { () -> [UInt8]? in
            _ = lock.wait(until: { token != nil || woken }, timeout: nil)
            return abort.isAborted ? nil : token
        }
    }
}

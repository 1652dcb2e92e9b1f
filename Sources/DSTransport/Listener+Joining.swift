import Glibc
import DSRing
import DSWire
import DSSupport

/// One accepted connection, on its reader thread: TLS first (with `security`), then the
/// preamble and the session token, then the session's checks; it joins the session, or is
/// rejected, turned away or dropped — never ending the receive.
extension SessionListener {
    func handle(_ conn: Connection, id: Int, ring: Ring) {
        Sockets.configure(conn.fd)
        let who = Self.peerName(conn.fd)
        // The admission deadline (`limits.deadline`, enforced by the `ds-admission` thread, which
        // wakes this reader) bounds the handshake and the preamble together; each read's own
        // wait is only a backstop behind it.
        let wait = limits.deadline + .seconds(1)
        if let security {
            switch Self.firstByte(conn.fd, ms: Int32(wait.seconds * 1000)) {
            case .silent:
                dropSilent(conn, id: id, who: who)
                return
            case .other:
                break
            case .plaintextPreamble:
                turnAway(conn, id: id, "the sender at \(who) is not using TLS (a plaintext devstream sender); this receiver requires TLS: give the sender the same pre-shared key or certificates",
                         hint: "give the sender the same --psk-file or --tls-cert/--tls-key/--tls-ca options",
                         ring: ring, tellPeer: true)
                return
            }
            do { try conn.startTLS(security, ring: ring, timeout: wait, peer: who) } catch {
                turnAway(conn, id: id, error.message, hint: error.hint)
                return
            }
            authenticated(id)
        }
        let stream = conn.secure
        var buf = [UInt8](repeating: 0, count: Preamble.size)
        let n: Int
        if let stream {
            let got = (try? stream.receive(count: Preamble.size, ring: ring, timeout: wait)) ?? []
            buf.replaceSubrange(0..<got.count, with: got)
            n = got.count
        } else {
            n = (try? buf.withUnsafeMutableBytes { try ring.recvExactly(fd: conn.fd, into: $0, timeout: wait) }) ?? 0
        }
        if n == 0 {
            dropSilent(conn, id: id, who: who)
            return
        }
        let preamble: Preamble
        do {
            guard n == Preamble.size else { throw WireError.truncatedPayload(needed: Preamble.size, remaining: n) }
            preamble = try buf.withUnsafeBytes { try Preamble.decode($0) }
        } catch {
            if case .unsupportedVersion(let version)? = error as? WireError {
                // A devstream peer of another release (the magic matched): say so to both sides.
                // The reject frame has kept its format in every version, so an older sender
                // prints this message instead of a bare reset.
                let message = "the sender at \(who) speaks devstream wire version \(version) and this receiver version \(WireLimits.version): run the same devstream release at both ends"
                _ = try? conn.send(ErrorMessage(code: 2, message: message).frame(type: .reject), timeout: .seconds(2), ring: ring)
                conn.shutdown(Int32(SHUT_WR))
                turnAway(conn, id: id, message, hint: "upgrade the older of the two devstream installations")
            } else if stream == nil && n >= 3 && buf[0] == 0x16 && buf[1] == 0x03 {
                turnAway(conn, id: id, "the sender at \(who) speaks TLS, but this receiver has no security options: give it the sender's pre-shared key, or certificates",
                         hint: "pass the sender's --psk-file, or --tls-cert/--tls-key/--tls-ca")
            } else {
                turnAway(conn, id: id, "the connection from \(who) is not a devstream sender (\(error))")
            }
            return
        }
        // The session token (channels 1... of a TLS session), inside TLS right after the preamble.
        var token: [UInt8] = []
        if let stream, preamble.authLength > 0 {
            token = (try? stream.receive(count: Int(preamble.authLength), ring: ring, timeout: wait)) ?? []
            guard token.count == Int(preamble.authLength) else {
                turnAway(conn, id: id, "the connection from \(who) closed inside its session token")
                return
            }
        }
        let channel = Int(preamble.channelIndex)
        switch claim(preamble, id: id, stream: stream, token: token) {
        case .late:
            dropByAdmission(conn, id: id, who: who)
            return
        case .refused(let refusal):
            warn("warning: rejected a connection from \(who): \(refusal)")
            reject(conn, ring: ring, refusal)
            release(id)
            conn.close()
            return
        case .joins:
            break
        }
        do { try conn.send(ErrorMessage.acceptFrame, timeout: timeout, ring: ring) } catch {
            lock.withLock { _ = reserved.remove(channel) }
            release(id)
            conn.close()
            return
        }
        release(id)
        if !join(conn, channel: channel) { conn.close() }
    }

    /// What the session's checks make of a connection.
    private enum Claim {
        /// It may join: its channel index is reserved.
        case joins
        /// It is refused, for this reason (said to the peer in a `reject` frame).
        case refused(String)
        /// Admission turned it away first (its deadline passed, or it was shed).
        case late
    }

    /// The session's checks for a connection's preamble (and token); the first preamble opens
    /// the session. What they return is said to the peer, which may be anyone: it never names
    /// the session (its id would let an outsider claim a free channel of it in plaintext). On success the channel index is reserved, under the lock, so a second
    /// connection for the same channel is refused even while this one's `accept` is sent, and
    /// the connection leaves admission (no deadline or shedding can cut it off now).
    private func claim(_ preamble: Preamble, id: Int, stream: SecureStream?, token: [UInt8]) -> Claim {
        lock.withLock { () -> Claim in
            if turnedAwayLocked(id) { return .late }
            if stream != nil && !preamble.features.contains(.tls) {
                return .refused("channel \(preamble.channelIndex) runs TLS but its preamble does not say so")
            }
            if stream == nil && preamble.features.contains(.tls) {
                return .refused("channel \(preamble.channelIndex) announces TLS but arrived in plaintext")
            }
            if session == nil, stream != nil, preamble.channelIndex != 0 {
                return .refused("channel \(preamble.channelIndex) arrived before channel 0, which opens a TLS session")
            }
            if session == nil, let over = TransferOptions.overBudget(connections: Int(preamble.channelCount), chunkSize: Int(preamble.chunkSize),
                                                                     tls: stream != nil, budget: memoryBudget) {
                let refusal = "\(over) here: the sender must use fewer connections or smaller chunks, or the receiver a larger budget"
                lastTurnedAway = (refusal, "give the sender fewer --connections or a smaller --chunk-size, or the receiver a larger --memory-budget")
                return .refused(refusal)
            }
            if session == nil {
                sessionToken = stream?.token
                session = SessionInfo(id: preamble.sessionID, mode: preamble.mode, channelCount: Int(preamble.channelCount),
                                      chunkSize: Int(preamble.chunkSize),
                                      totalSize: preamble.totalSize == Preamble.unknownSize ? nil : preamble.totalSize,
                                      features: preamble.features)
                lastTurnedAway = nil
            }
            let s = session!
            let channel = Int(preamble.channelIndex)
            if preamble.sessionID != s.id {
                return .refused("the receiver is busy with another session")
            } else if Int(preamble.channelCount) != s.channelCount || Int(preamble.chunkSize) != s.chunkSize
                        || preamble.mode != s.mode {
                return .refused("channel \(preamble.channelIndex) disagrees with the session's channel count, chunk size or mode")
            } else if joined[channel] != nil || reserved.contains(channel) {
                return .refused("channel \(preamble.channelIndex) of the session has already joined")
            } else if joined.count + reserved.count == s.channelCount {
                return .refused("the session is complete")
            } else if stream != nil, preamble.channelIndex != 0, !constantTimeEqual(token, sessionToken ?? []) {
                return .refused("channel \(preamble.channelIndex) does not carry the session's token: it is not part of the TLS session that opened it on channel 0")
            }
            reserved.insert(channel)
            leaveAdmissionLocked(id)
            return .joins
        }
    }

    // MARK: Turning connections away

    /// Tells a connection of a (possibly) matching sender why it is refused: a `reject` frame
    /// (through TLS when it has a stream), then no more sends; the session goes on.
    private func reject(_ conn: Connection, ring: Ring, _ message: String) {
        // Counted before the peer can see anything, here and below: whoever sees the refusal
        // (the sender, a test) sees the count too.
        lock.withLock { rejected += 1 }
        let frame = ErrorMessage(code: 2, message: message).frame(type: .reject)
        _ = try? conn.send(frame, timeout: .seconds(2), ring: ring)
        conn.shutdown(Int32(SHUT_WR))
    }

    /// A connection that is not a (matching) devstream sender, or that failed to authenticate:
    /// logged and closed; the receive goes on, whether or not a session has started (nothing a
    /// stranger sends ends a receiver waiting for its sender). Before a session, it is
    /// remembered for `waitForSession`'s timeout error, with `hint` (which may name the CLI's
    /// flags). With `tellPeer` the peer (a plaintext devstream sender) is told why, in plaintext.
    /// A connection admission already turned away is dropped as such instead.
    private func turnAway(_ conn: Connection, id: Int, _ message: String, hint: String? = nil,
                          ring: Ring? = nil, tellPeer: Bool = false) {
        if turnedAway(id) != nil {
            dropByAdmission(conn, id: id, who: Self.peerName(conn.fd))
            return
        }
        let stopping = lock.withLock { () -> Bool in
            rejected += 1
            if session == nil { lastTurnedAway = (message, hint) }
            return self.stopping
        }
        if tellPeer, let ring {
            // Said in plaintext: the peer speaks plaintext devstream. Read its preamble first:
            // closing with unread bytes would reset the connection before it reads the reason.
            var sink = [UInt8](repeating: 0, count: Preamble.size)
            _ = try? sink.withUnsafeMutableBytes { try ring.recvExactly(fd: conn.fd, into: $0, timeout: .seconds(2)) }
            let frame = ErrorMessage(code: 2, message: message).frame(type: .reject)
            _ = try? conn.send(frame, timeout: .seconds(2), ring: ring)
            conn.shutdown(Int32(SHUT_WR))
        }
        release(id)
        conn.close()
        if !stopping { warn("warning: turned away \(message)") }
    }

    /// A connection that sent nothing at all (a port probe that closed, or one silent past the
    /// timeout): not a sender, so it is dropped with a warning and the listener goes on.
    private func dropSilent(_ conn: Connection, id: Int, who: String) {
        if turnedAway(id) != nil {
            dropByAdmission(conn, id: id, who: "\(who) that sent nothing")
            return
        }
        let stopping = lock.withLock { dropped += 1; return self.stopping }
        release(id)
        conn.close()
        if !stopping { warn("warning: dropped a connection from \(who) that sent nothing") }
    }

    /// A connection admission turned away (shed for room, or past its deadline): reset, so
    /// that its sender, if it is one, says so.
    private func dropByAdmission(_ conn: Connection, id: Int, who: String) {
        let why = turnedAway(id) ?? "admission turned it away"
        let stopping = lock.withLock { () -> Bool in
            dropped += 1
            admissionDropped += 1
            return self.stopping
        }
        release(id)
        Self.reset(conn)
        if !stopping { warn("warning: dropped a connection from \(PeerText.escape(who)): \(why)") }
    }

    // MARK: Socket facts

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

    /// The peer's address without its port (IPv4 or IPv6 text; "local" for a Unix socket;
    /// "unknown" when it cannot be read): what admission counts connections by.
    static func peerAddress(_ fd: Int32) -> String {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) } }
        guard rc == 0 else { return "unknown" }
        var buf = [CChar](repeating: 0, count: 64)
        switch Int32(storage.ss_family) {
        case AF_INET:
            withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
                var a = p.pointee.sin_addr
                _ = inet_ntop(AF_INET, &a, &buf, 64) } }
        case AF_INET6:
            withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                var a = p.pointee.sin6_addr
                _ = inet_ntop(AF_INET6, &a, &buf, 64) } }
        case AF_UNIX:
            return "local"
        default:
            return "unknown"
        }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The peer's IPv4 `address:port`, or "a peer".
    static func peerName(_ fd: Int32) -> String {
        var addr = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) } } == 0
        guard ok, addr.sin_family == sa_family_t(AF_INET) else { return "a peer" }
        var buf = [CChar](repeating: 0, count: 32)
        var a = addr.sin_addr
        inet_ntop(AF_INET, &a, &buf, 32)
        let text = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return "\(text):\(UInt16(bigEndian: addr.sin_port))"
    }
}

/// Compares two byte strings in time that depends only on their lengths.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count, !a.isEmpty else { return false }
    var diff: UInt8 = 0
    for i in 0..<a.count { diff |= a[i] ^ b[i] }
    return diff == 0
}

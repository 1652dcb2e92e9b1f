import Glibc
import DSRing
import DSWire
import DSSupport

/// One accepted connection, on its reader thread: TLS first (with `security`), then the
/// preamble and the session token, then the session's checks; it joins the session, or is
/// rejected, refused or dropped.
extension SessionListener {
    func handle(_ conn: Connection, id: Int, ring: Ring) {
        Sockets.configure(conn.fd)
        let who = Self.peerName(conn.fd)
        let wait = min(timeout, .seconds(10))
        if let security {
            switch Self.firstByte(conn.fd, ms: Int32(wait.seconds * 1000)) {
            case .silent:
                dropSilent(conn, id: id, who: who)
                return
            case .other:
                break
            case .plaintextPreamble:
                refuseStranger(conn, id: id, "the sender at \(who) is not using TLS (a plaintext devstream sender); this receiver requires TLS: give the sender the same pre-shared key or certificates",
                               hint: "give the sender the same --psk-file or --tls-cert/--tls-key/--tls-ca options",
                               code: .rejected, ring: ring, tellPeer: true)
                return
            }
            do { try conn.startTLS(security, ring: ring, timeout: wait, peer: who) } catch {
                refuseStranger(conn, id: id, error.message, hint: error.hint, code: error.code)
                return
            }
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
                refuseStranger(conn, id: id, "the sender at \(who) speaks TLS, but this receiver has no security options: give it the sender's pre-shared key, or certificates",
                               hint: "pass the sender's --psk-file, or --tls-cert/--tls-key/--tls-ca", code: .rejected)
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
        let channel = Int(preamble.channelIndex)
        if let refusal = claim(preamble, stream: stream, token: token) {
            warn("warning: rejected a connection from \(who): \(refusal)")
            reject(conn, ring: ring, refusal)
            release(id)
            conn.close()
            return
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

    /// The session's checks for a connection's preamble (and token); the first preamble opens
    /// the session. On success the channel index is reserved, under the lock, so a second
    /// connection for the same channel is refused even while this one's `accept` is sent.
    /// - Returns: nil when the connection may join; else why not.
    private func claim(_ preamble: Preamble, stream: SecureStream?, token: [UInt8]) -> String? {
        lock.withLock { () -> String? in
            if stream != nil && !preamble.features.contains(.tls) {
                return "channel \(preamble.channelIndex) runs TLS but its preamble does not say so"
            }
            if stream == nil && preamble.features.contains(.tls) {
                return "channel \(preamble.channelIndex) announces TLS but arrived in plaintext"
            }
            if session == nil, stream != nil, preamble.channelIndex != 0 {
                return "channel \(preamble.channelIndex) arrived before channel 0, which opens a TLS session"
            }
            if session == nil {
                sessionToken = stream?.token
                session = SessionInfo(id: preamble.sessionID, mode: preamble.mode, channelCount: Int(preamble.channelCount),
                                      chunkSize: Int(preamble.chunkSize),
                                      totalSize: preamble.totalSize == Preamble.unknownSize ? nil : preamble.totalSize,
                                      features: preamble.features)
            }
            let s = session!
            let channel = Int(preamble.channelIndex)
            if preamble.sessionID != s.id {
                return "the receiver is busy with another session (\(s.id)); this connection belongs to session \(preamble.sessionID)"
            } else if Int(preamble.channelCount) != s.channelCount || Int(preamble.chunkSize) != s.chunkSize
                        || preamble.mode != s.mode {
                return "channel \(preamble.channelIndex) disagrees with the session's channel count, chunk size or mode"
            } else if joined[channel] != nil || reserved.contains(channel) {
                return "channel \(preamble.channelIndex) of session \(s.id) has already joined"
            } else if joined.count + reserved.count == s.channelCount {
                return "session \(s.id) is complete"
            } else if stream != nil, preamble.channelIndex != 0, !constantTimeEqual(token, sessionToken ?? []) {
                return "channel \(preamble.channelIndex) does not carry session \(s.id)'s token: it is not part of the TLS session that opened it on channel 0"
            }
            reserved.insert(channel)
            return nil
        }
    }

    // MARK: Turning connections away

    /// Tells a connection of a (possibly) matching sender why it is refused: a `reject` frame
    /// (through TLS when it has a stream), then no more sends; the session goes on.
    private func reject(_ conn: Connection, ring: Ring, _ message: String) {
        let frame = ErrorMessage(code: 2, message: message).frame(type: .reject)
        _ = try? conn.send(frame, timeout: .seconds(2), ring: ring)
        conn.shutdown(Int32(SHUT_WR))
        lock.withLock { rejected += 1 }
    }

    /// A connection that is not a (matching) devstream sender: fails the receive if no session
    /// has started (it handles one transfer), else is logged and dropped.
    /// The peer (with `tellPeer`) and the warning get `message` only; `hint` (which may name
    /// the CLI's flags) goes with the receive's failure.
    private func refuseStranger(_ conn: Connection, id: Int, _ message: String, hint: String? = nil, code: TransferError.Code = .protocolViolation,
                                ring: Ring? = nil, tellPeer: Bool = false) {
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
        let fatal = lock.withLock { () -> Bool in
            rejected += 1
            guard session == nil, !stopping else { return false }
            failure = TransferError(code, message + "; no transfer took place", hint: hint)
            lock.broadcast()
            return true
        }
        if !fatal && !lock.withLock({ stopping }) { warn("warning: rejected \(message)") }
    }

    /// A connection that sent nothing at all (a port probe that closed, or one silent past the
    /// timeout): not a sender, so it is dropped with a warning and the listener goes on.
    private func dropSilent(_ conn: Connection, id: Int, who: String) {
        release(id)
        conn.close()
        let stopping = lock.withLock { dropped += 1; return self.stopping }
        if !stopping { warn("warning: dropped a connection from \(who) that sent nothing") }
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

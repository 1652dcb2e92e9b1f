import Testing
import Synchronization
import Glibc
import DSRing
import DSWire
import DSCodec
@testable import DSTransport
import DSTestSupport
import DSSupport

func pskOptions(connections: Int = 3, key: UInt8 = 7) -> TransferOptions {
    var o = options(connections: connections)
    o.allowInsecure = false
    o.security = SecurityOptions(.psk(key: [UInt8](repeating: key, count: 32) + [1, 2, 3]))
    return o
}

func tlsTmpPath(_ name: String) -> String {
    "/tmp/tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))-\(name)"
}

@Suite(.serialized) struct SecurityTests {
    @Test(arguments: [1, 3])
    func pskRoundTrip(connections: Int) throws {
        let src = tlsTmpPath("src"), out = tlsTmpPath("out")
        defer { unlink(src); unlink(out) }
        let data = testData(3_000_000, seed: 21)
        writeFile(src, data)
        let (sent, received) = try transfer(source: src, output: out, options: pskOptions(connections: connections))
        #expect(sent.completed, "\(sent.error?.message ?? "")")
        #expect(received.completed, "\(received.error?.message ?? "")")
        #expect(readFile(out) == data)
        #expect(sent.digest != nil && sent.digest == received.digest)
        #expect(received.connections == connections)
        #expect(sent.protection == .tlsPSK && received.protection == .tlsPSK)
    }

    /// A sender with another key fails and says the keys differ; the receiver turns it away
    /// with a warning and waits on for its sender, and its timeout error says what it saw.
    @Test func wrongPSKIsRefusedAtBothEnds() throws {
        let src = tlsTmpPath("src"), out = tlsTmpPath("out")
        defer { unlink(src); unlink(out) }
        writeFile(src, testData(500_000, seed: 2))
        let warnings = Mutex<[String]>([])
        let (sent, received) = try transfer(source: src, output: out, options: pskOptions(key: 1), receiverOptions: pskOptions(key: 2),
                                            acceptTimeout: .seconds(1), receiverWarnings: { w in warnings.withLock { $0.append(w) } })
        #expect(!sent.completed && !received.completed)
        #expect(sent.error?.hint?.contains("--psk-file") == true, "\(sent.error?.description ?? "")")
        #expect(received.error?.code == .timeout, "\(received.error?.message ?? "")")
        #expect(received.error?.message.contains("turned away, the last because") == true
                && received.error?.message.contains("pre-shared keys differ") == true, "\(received.error?.message ?? "")")
        #expect(received.error?.hint?.contains("--psk-file") == true)
        #expect(warnings.withLock { $0.contains { $0.contains("pre-shared keys differ") } }, "\(warnings.withLock { $0 })")
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    @Test func plaintextSenderToTLSReceiverFailsClearly() throws {
        let src = tlsTmpPath("src"), out = tlsTmpPath("out")
        defer { unlink(src); unlink(out) }
        writeFile(src, testData(200_000, seed: 3))
        let (sent, received) = try transfer(source: src, output: out, options: options(), receiverOptions: pskOptions(),
                                            acceptTimeout: .seconds(1))
        #expect(!sent.completed && !received.completed)
        #expect(sent.error?.code == .rejected, "\(sent.error?.message ?? "")")
        #expect(sent.error?.message.contains("requires TLS") == true, "\(sent.error?.message ?? "")")
        #expect(received.error?.code == .timeout && received.error?.message.contains("not using TLS") == true, "\(received.error?.message ?? "")")
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    @Test func tlsSenderToPlaintextReceiverFailsClearly() throws {
        let src = tlsTmpPath("src"), out = tlsTmpPath("out")
        defer { unlink(src); unlink(out) }
        writeFile(src, testData(200_000, seed: 3))
        let (sent, received) = try transfer(source: src, output: out, options: pskOptions(), receiverOptions: options(),
                                            acceptTimeout: .seconds(1))
        #expect(!sent.completed && !received.completed)
        #expect(sent.error?.message.contains("TLS") == true, "\(sent.error?.message ?? "")")
        #expect(received.error?.code == .timeout && received.error?.message.contains("speaks TLS") == true, "\(received.error?.message ?? "")")
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    /// A flipped ciphertext byte fails the record's AES-GCM tag: refused, nothing left behind.
    @Test(arguments: [100, 64 + 40 + 30_000, 200_000])
    func tamperedCiphertextIsRefused(at offset: Int) throws {
        let src = tlsTmpPath("src"), out = tlsTmpPath("out")
        defer { unlink(src); unlink(out) }
        writeFile(src, testData(1_000_000, seed: 4))
        let o = pskOptions(connections: 1)
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        let proxy = try FaultProxy(to: receiver.listener.endpoint, fault: .flip(at: offset))
        nonisolated(unsafe) var received: TransferReport?
        // A flip inside the handshake only turns that connection away: the receiver then waits
        // for another sender, here for a second.
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(1)) }
        let sent = TransferSender.send(try TransferSource(path: src), to: proxy.endpoint, options: o, warn: { _ in })
        t.join(); proxy.join()
        #expect(!sent.completed)
        #expect(received?.completed == false)
        #expect(received?.error != nil)
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    /// Channel 1 must carry the token of channel 0's TLS connection: a peer with the right
    /// PSK but its own connection (a wrong token, its own token, or none) is turned away, and
    /// the real session still completes.
    @Test func channelsAreBoundToChannelZerosSession() throws {
        let o = pskOptions(connections: 2)
        let listener = try SessionListener(endpoint: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        try listener.start()
        let client = try SecurityContext(o.security!, server: false)
        let ring = try Ring(entries: 8)
        let session = SessionID.random()
        var keep: [SecureStream] = []
        var fds: [Int32] = []
        defer { keep = []; for fd in fds { close(fd) } }

        /// Opens a TLS connection and sends channel `index`'s preamble with `token`; returns the
        /// reply frame type (nil: closed without one) and the stream.
        func join(_ index: UInt16, token: (SecureStream) -> [UInt8]?) throws -> (FrameType?, SecureStream) {
            let fd = try Sockets.connect(listener.endpoint, ring: ring, timeout: .seconds(5))
            fds.append(fd)
            let s = try SecureStream.handshake(fd: fd, context: client, ring: ring, timeout: .seconds(5), peer: "test")
            keep.append(s)
            var p = Preamble(features: [.xxh3, .tls], sessionID: session, channelIndex: index, channelCount: 2,
                             chunkSize: 64 << 10, mode: .addressable, totalSize: 1000)
            p.authMethod = Preamble.authSessionToken
            let t = token(s) ?? []
            p.authLength = UInt16(t.count)
            try s.send(p.encoded() + t, ring: ring, timeout: .seconds(5))
            let reply = (try? s.receive(count: FrameHeader.size, ring: ring, timeout: .seconds(5))) ?? []
            guard reply.count == FrameHeader.size else { return (nil, s) }
            return (try reply.withUnsafeBytes { try FrameHeader.decode($0) }.type, s)
        }

        let (r0, s0) = try join(0) { _ in nil }
        #expect(r0 == .accept)
        let (wrong, _) = try join(1) { _ in [UInt8](repeating: 0xAB, count: 32) }
        #expect(wrong == .reject)
        let (own, _) = try join(1) { $0.token }            // its own connection's exporter
        #expect(own == .reject)
        let (absent, _) = try join(1) { _ in nil }          // no token at all: not a valid preamble
        #expect(absent == nil)
        let (real, _) = try join(1) { _ in s0.token }
        #expect(real == .accept)
        let (info, sockets) = try listener.waitForSession(timeout: .seconds(5))
        #expect(info.id == session && sockets.count == 2)
        #expect(listener.rejectedCount == 3)
        listener.stop()
    }

    /// A "receiver" that accepts, reads `take` bytes (nil: nothing) and then closes (or, with
    /// `hold`, keeps the connection silent until the test ends).
    /// With `take` 0 the peer reads whatever the client sent (its ClientHello) before it closes,
    /// so the close is an end of stream, not a reset.
    func silentPeer(take: Int?, hold: Bool) throws -> (Endpoint, OSThread) {
        let (lfd, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        let t = try OSThread(name: "ds-test") {
            let c = accept(lfd, nil, nil)
            if let take {
                var buf = [UInt8](repeating: 0, count: take == 0 ? 16384 : take)
                if take == 0 {
                    var p = pollfd(fd: c, events: Int16(POLLIN), revents: 0)
                    while poll(&p, 1, 200) == 1, buf.withUnsafeMutableBytes({ recv(c, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
                } else {
                    _ = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, Int32(MSG_WAITALL)) }
                }
            }
            if hold { usleep(2_500_000) }
            close(c); close(lfd)
        }
        return (Endpoint(host: "127.0.0.1", port: port), t)
    }

    @Test func handshakeTimeoutIsReported() throws {
        let src = tlsTmpPath("src")
        defer { unlink(src) }
        writeFile(src, [1, 2, 3])
        let (endpoint, t) = try silentPeer(take: nil, hold: true)
        var o = pskOptions(connections: 2)
        o.timeout = .milliseconds(500)
        let r = TransferSender.send(try TransferSource(path: src), to: endpoint, options: o, warn: { _ in })
        t.join()
        #expect(!r.completed && r.error?.code == .timeout, "\(r.error?.message ?? "")")
        #expect(r.error?.message.contains("TLS handshake") == true && r.error?.message.contains("timed out") == true, "\(r.error?.message ?? "")")
    }

    @Test func peerClosingMidHandshakeIsReported() throws {
        let src = tlsTmpPath("src")
        defer { unlink(src) }
        writeFile(src, [1, 2, 3])
        let (endpoint, t) = try silentPeer(take: 0, hold: false)
        let r = TransferSender.send(try TransferSource(path: src), to: endpoint, options: pskOptions(connections: 2), warn: { _ in })
        t.join()
        #expect(!r.completed && r.error?.code == .peerClosed, "\(r.error?.message ?? "")")
        #expect(r.error?.message.contains("TLS handshake") == true && r.error?.hint?.contains("--psk-file") == true, "\(r.error?.description ?? "")")
        // A peer that hangs up with our ClientHello unread resets the connection: that is how a
        // receiver turns away what it cannot admit, and the sender says so, not "wrong key".
        let (endpoint2, t2) = try silentPeer(take: 50, hold: false)
        let r2 = TransferSender.send(try TransferSource(path: src), to: endpoint2, options: pskOptions(connections: 2), warn: { _ in })
        t2.join()
        #expect(!r2.completed && r2.error?.code == .rejected, "\(r2.error?.message ?? "")")
        #expect(r2.error?.message.contains("reset the connection before it was authenticated") == true
                && r2.error?.message.contains("TLS alert") == true, "\(r2.error?.description ?? "")")
    }

    /// A connection that says nothing to a TLS receiver (no handshake) is dropped with a
    /// warning, like a plaintext one: it does not end the receive, which then times out waiting
    /// for a real sender, with a clear error.
    @Test func silentConnectionToATLSReceiver() throws {
        var o = pskOptions(connections: 1)
        o.timeout = .milliseconds(400)
        let out = tlsTmpPath("out")
        let warnings = Mutex<[String]>([])
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o,
                                            warn: { w in warnings.withLock { $0.append(w) } })
        let c = rawConnect(receiver.listener.endpoint)
        defer { close(c) }
        let r = receiver.receive(output: out, acceptTimeout: .seconds(2))
        #expect(!r.completed && r.error?.code == .timeout, "\(r.error?.message ?? "")")
        #expect(r.error?.message.contains("no sender connected") == true, "\(r.error?.message ?? "")")
        #expect(receiver.listener.droppedCount == 1)
        #expect(warnings.withLock { $0.contains { $0.contains("sent nothing") } }, "\(warnings.withLock { $0 })")
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    /// No security options and no `allowInsecure`: refused on every address, loopback
    /// included, before anything binds or connects; `allowInsecure` (or a key) allows it.
    @Test func plaintextNeedsInsecureOnEveryAddress() throws {
        let plain = TransferOptions()
        for host in ["127.0.0.1", "127.9.8.7", "::1", "localhost", "0.0.0.0", "192.0.2.1", "::"] {
            let e = #expect(throws: TransferError.self) { try plain.checkPlaintext(Endpoint(host: host, port: 7000)) }
            #expect(e?.code == .usage)
            #expect(e?.message.contains("without security options") == true && e?.message.contains("allowInsecure") == true
                    && e?.message.contains("local user") == true, "\(e?.message ?? "")")
            #expect(e?.hint?.contains("--insecure") == true && e?.hint?.contains("--psk-file") == true)
        }
        var insecure = TransferOptions()
        insecure.allowInsecure = true
        #expect(throws: Never.self) { try insecure.checkPlaintext(Endpoint(host: "127.0.0.1", port: 7000)) }
        #expect(throws: Never.self) { try insecure.checkPlaintext(Endpoint(host: "192.0.2.1", port: 7000)) }
        #expect(throws: Never.self) { try pskOptions().checkPlaintext(Endpoint(host: "127.0.0.1", port: 7000)) }
        // The library applies it too: before binding, and before connecting (loopback included).
        for host in ["127.0.0.1", "0.0.0.0"] {
            #expect(throws: TransferError.self) { _ = try TransferReceiver(listen: Endpoint(host: host, port: 0), options: plain, warn: { _ in }) }
            #expect(throws: TransferError.self) { _ = try SessionListener(endpoint: Endpoint(host: host, port: 0), options: plain, warn: { _ in }) }
        }
        let src = tlsTmpPath("src")
        defer { unlink(src) }
        writeFile(src, [1, 2, 3])
        // A listener that would take the session: the sender refuses before connecting to it.
        let open = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options(), warn: { _ in })
        for endpoint in [open.listener.endpoint, Endpoint(host: "192.0.2.1", port: 7000)] {
            let start = Monotonic.now
            let r = TransferSender.send(try TransferSource(path: src), to: endpoint, options: plain, warn: { _ in })
            #expect(!r.completed && r.error?.code == .usage, "\(r.error?.message ?? "")")
            #expect(Monotonic.now - start < .seconds(2))
        }
        #expect(open.listener.pendingCount == 0 && open.listener.droppedCount == 0 && open.listener.rejectedCount == 0)
    }

    /// Handed-in sockets without security: a Unix socket whose peer is this user is accepted
    /// (SO_PEERCRED: the kernel vouches for it); a TCP one, loopback included, is not.
    @Test func handedInSocketsWithoutSecurity() throws {
        var sv: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0)
        defer { close(sv[0]); close(sv[1]) }
        #expect(Sockets.isSameUserUnixPeer(sv[0]))
        #expect(throws: Never.self) { try Sockets.checkAdopted([sv[0]], count: 1, options: TransferOptions()) }
        let (lfd, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        defer { close(lfd) }
        let c = rawConnect(Endpoint(host: "127.0.0.1", port: port))
        defer { close(c) }
        #expect(!Sockets.isSameUserUnixPeer(c))
        let e = #expect(throws: TransferError.self) { try Sockets.checkAdopted([c], count: 1, options: TransferOptions()) }
        #expect(e?.code == .usage && e?.message.contains("Unix socket whose peer runs as this user") == true, "\(e?.message ?? "")")
        var insecure = TransferOptions()
        insecure.allowInsecure = true
        #expect(throws: Never.self) { try Sockets.checkAdopted([c], count: 1, options: insecure) }
        #expect(throws: Never.self) { try Sockets.checkAdopted([c], count: 1, options: pskOptions()) }
    }

    /// A key made in memory, written to a file: 0600, hex, read back as the same key.
    @Test func keyFilesAreWrittenForTheOwnerOnly() throws {
        let path = tlsTmpPath("key")
        defer { unlink(path) }
        let old = umask(0)
        defer { umask(old) }
        let made = try SecurityOptions.randomKey()
        try made.writeKeyFile(path)
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600, "mode \(String(st.st_mode & 0o777, radix: 8))")
        #expect(try SecurityOptions.pskFile(path) == made)
        #expect(try SecurityOptions.randomKey() != made)
        let x509 = SecurityOptions(.x509(certificate: nil, privateKey: nil, ca: "/nonexistent"))
        #expect(throws: TransferError.self) { try x509.writeKeyFile(path + ".x") }
        #expect(!exists(path + ".x"))
    }

    /// Key files are strict: hex only (at least 64 digits, an even number, whitespace only
    /// around them), a regular file, and private to its owner; every refusal says what to do
    /// and quotes nothing of the file.
    @Test func pskFiles() throws {
        let path = tlsTmpPath("key")
        defer { unlink(path) }
        let hex = String(repeating: "0a1B", count: 16)
        let key = [UInt8]((0..<16).flatMap { _ in [0x0a, 0x1b] })
        // Accepted: surrounding whitespace, upper- and lower-case digits, mode 0600 or 0400.
        for (text, mode) in [(hex + "\n", 0o600), ("  \n\t" + hex + "\r\n\n", 0o600), (hex + hex, 0o400)] {
            writePrivateFile(path, Array(text.utf8))
            chmod(path, mode_t(mode))
            let expected = text.hasSuffix(hex + hex) ? key + key : key
            #expect(try SecurityOptions.pskFile(path) == SecurityOptions(.psk(key: expected)), "\(text.debugDescription)")
        }
        func refused(_ bytes: [UInt8], mode: Int = 0o600, _ says: String, sourceLocation: SourceLocation = #_sourceLocation) {
            writePrivateFile(path, bytes)
            chmod(path, mode_t(mode))
            let e = #expect(throws: TransferError.self, sourceLocation: sourceLocation) { try SecurityOptions.pskFile(path) }
            #expect(e?.code == .usage, sourceLocation: sourceLocation)
            #expect(e?.message.contains(says) == true, "\(e?.message ?? "")", sourceLocation: sourceLocation)
            #expect(e?.message.contains("0a1B") == false && e?.message.contains("qqq") == false, "the message quotes the key: \(e?.message ?? "")",
                    sourceLocation: sourceLocation)
        }
        // Readable (or writable) by group or others: refused, with the fix.
        for mode in [0o644, 0o640, 0o604, 0o620, 0o666] {
            refused(Array(hex.utf8), mode: mode, "chmod 600 \(path)")
        }
        refused(Array(hex.utf8), mode: 0o644, "mode 644")
        // Not a key: empty, 40 newlines, raw bytes, interior whitespace, too short, odd.
        refused([], "holds 0 hex digits")
        refused([UInt8](repeating: 0x0a, count: 40), "holds 0 hex digits")
        refused([UInt8](repeating: 0xFE, count: 40), "something other than hex digits")
        refused(Array((String(hex.prefix(32)) + " " + String(hex.suffix(32))).utf8), "something other than hex digits (at byte 32)")
        refused(Array(("qqq" + hex).utf8), "something other than hex digits")
        refused(Array(String(hex.prefix(62)).utf8), "holds 62 hex digits")
        refused(Array((hex + "a").utf8), "holds 65 hex digits")
        // Not a file.
        let e = #expect(throws: TransferError.self) { try SecurityOptions.pskFile("/tmp") }
        #expect(e?.message.contains("not a regular file") == true, "\(e?.message ?? "")")
        #expect(throws: TransferError.self) { try SecurityOptions.pskFile("/nonexistent/tls-key") }
    }

    /// Reject messages go to whoever connected: they never name the session, whose id would
    /// let an outsider claim a free channel of a plaintext session.
    @Test func rejectMessagesNameNoSession() throws {
        let listener = try SessionListener(endpoint: Endpoint(host: "127.0.0.1", port: 0), options: options(connections: 2), warn: { _ in })
        try listener.start()
        defer { listener.stop() }
        let session = SessionID(high: 0x1122_3344_5566_7788, low: 0x99AA_BBCC_DDEE_FF00)
        func join(_ id: SessionID, channel: UInt16) -> (FrameType?, String) {
            let fd = rawConnect(listener.endpoint)
            defer { close(fd) }
            sendRaw(fd, Preamble(features: [.xxh3], sessionID: id, channelIndex: channel, channelCount: 2, chunkSize: 65536,
                                 mode: .addressable, totalSize: 100).encoded())
            guard let (h, payload) = readFrame(fd) else { return (nil, "") }
            return (h.type, (try? ErrorMessage.decode(payload))?.message ?? "")
        }
        #expect(join(session, channel: 0).0 == .accept)
        let texts = ["\(session)", String(session.high, radix: 16), String(session.low, radix: 16)]
        for (id, channel) in [(SessionID.random(), UInt16(1)), (session, 0)] {
            let (type, message) = join(id, channel: channel)
            #expect(type == .reject && !message.isEmpty)
            for t in texts { #expect(!message.lowercased().contains(t.lowercased()), "the reject names the session: \(message)") }
        }
    }
}

import Testing
import Glibc
import Synchronization
import DSRing
import DSWire
import DSCodec
@testable import DSTransport
import DSTestSupport
import DSSupport

/// Peers that misbehave on purpose: silent or probing connections, huge claims, symlinked
/// partial files, escape sequences in messages, a producer that pauses.
@Suite(.serialized) struct HostilePeerTests {
    func prepared(_ n: Int = 1_500_000, seed: UInt64 = 21) -> (String, String, [UInt8]) {
        preparedFiles("hostile", n, seed: seed)
    }

    /// A connection that opens and says nothing is held open while a real transfer completes:
    /// preambles (and TLS handshakes) are read concurrently, so it blocks nothing.
    @Test(arguments: [false, true])
    func silentConnectionDoesNotBlockATransfer(tls: Bool) throws {
        let (src, out, data) = prepared()
        defer { unlink(src); unlink(out) }
        var o = options(timeout: .seconds(5))
        if tls { o.security = pskOptions().security }
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        let silent = rawConnect(receiver.listener.endpoint)
        defer { close(silent) }
        usleep(100_000)
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(10)) }
        let start = Monotonic.now
        let sent = TransferSender.send(try TransferSource(path: src), to: receiver.listener.endpoint, options: o, warn: { _ in })
        t.join()
        #expect(sent.completed, "\(sent.error?.message ?? "")")
        #expect(received?.completed == true, "\(received?.error?.message ?? "")")
        let same = readFile(out) == data
        #expect(same, "the received bytes differ from those sent")
        // Well under the 5 s preamble timeout the silent connection would hold a serial reader.
        #expect(Monotonic.now - start < .seconds(4))
    }

    /// A session with more channels than a handful: once channel 0 is accepted the others all
    /// connect at once, and the listener must take every one of them (it once closed all but
    /// 16 of the connections waiting for their preamble).
    /// With TLS each waiting connection runs a handshake, so many are in flight at once.
    @Test(arguments: [false, true])
    func aSessionOfManyChannelsIsAdmittedWhole(tls: Bool) throws {
        let (src, out, data) = prepared(4_000_000, seed: 23)
        defer { unlink(src); unlink(out) }
        var o = options(connections: 64, chunk: 64 << 10, timeout: .seconds(10))
        if tls { o.security = pskOptions().security }
        let (sent, received) = try transfer(source: src, output: out, options: o)
        #expect(sent.completed, "\(sent.error?.message ?? "")")
        #expect(received.completed, "\(received.error?.message ?? "")")
        let same = readFile(out) == data
        #expect(same)
    }

    /// A port probe (connect, then close without a byte) before the sender: dropped with a
    /// warning, and the receive goes on.
    @Test(arguments: [false, true])
    func zeroByteProbeBeforeATransfer(tls: Bool) throws {
        let (src, out, data) = prepared()
        defer { unlink(src); unlink(out) }
        let warnings = Warnings()
        var o = options()
        if tls { o.security = pskOptions().security }
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: warnings.sink)
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(10)) }
        close(rawConnect(receiver.listener.endpoint))
        // The probe is dropped before the real sender arrives.
        var waited = 0
        while receiver.listener.droppedCount == 0 && waited < 200 { usleep(10_000); waited += 1 }
        #expect(receiver.listener.droppedCount == 1)
        let sent = TransferSender.send(try TransferSource(path: src), to: receiver.listener.endpoint, options: o, warn: { _ in })
        t.join()
        #expect(sent.completed, "\(sent.error?.message ?? "")")
        #expect(received?.completed == true, "\(received?.error?.message ?? "")")
        let same = readFile(out) == data
        #expect(same, "the received bytes differ from those sent")
        #expect(warnings.all.contains("sent nothing"), "\(warnings.all)")
    }

    /// A lone preamble claiming more than the disk holds fails at once, before any file exists.
    @Test func hugeClaimFailsBeforeAnyFile() throws {
        let out = tmpPath("hostile-claim")
        defer { unlink(out); unlink(out + ".partial") }
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options(timeout: .seconds(2)), warn: { _ in })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        let fd = rawConnect(receiver.listener.endpoint)
        sendRaw(fd, Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 1, chunkSize: 65536,
                             mode: .addressable, totalSize: 1 << 62).encoded())
        t.join()
        close(fd)
        #expect(received?.completed == false)
        #expect(received?.error?.message.contains("are free") == true, "\(received?.error?.message ?? "")")
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    /// A lone preamble claiming a size the disk could hold, then silence: nothing is reserved
    /// while it waits (the partial file has no blocks), and nothing is left after.
    @Test func lonePreambleReservesNothing() throws {
        let out = tmpPath("hostile-lone")
        defer { unlink(out); unlink(out + ".partial") }
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options(timeout: .seconds(1)), warn: { _ in })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        let fd = rawConnect(receiver.listener.endpoint)
        sendRaw(fd, Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 1, chunkSize: 65536,
                             mode: .addressable, totalSize: 256 << 20).encoded())
        usleep(400_000)
        var st = stat()
        if stat(out + ".partial", &st) == 0 {
            #expect(st.st_blocks == 0 && st.st_size == 0, "reserved \(st.st_blocks) blocks for a peer that sent no data")
        }
        t.join()
        close(fd)
        #expect(received?.completed == false)
        #expect(received?.error?.code == .timeout, "\(received?.error?.message ?? "")")
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    /// FILE.partial is a symlink to a victim file: the receive fails and says so, the victim is
    /// untouched, and nothing is written through the link.
    @Test func partialSymlinkIsNeverFollowed() throws {
        let (src, out, _) = prepared(300_000)
        let victim = tmpPath("hostile-victim")
        defer { unlink(src); unlink(out); unlink(out + ".partial"); unlink(victim) }
        let precious = Array("do not overwrite me".utf8)
        writeFile(victim, precious)
        #expect(symlink(victim, out + ".partial") == 0)
        let (sent, received) = try transfer(source: src, output: out, options: options())
        #expect(!sent.completed && !received.completed)
        #expect(received.error?.message.contains("not a leftover of ours") == true, "\(received.error?.message ?? "")")
        #expect(received.error?.message.contains("remove it and retry") == true)
        #expect(readFile(victim) == precious)
        var lst = stat()
        #expect(lstat(out + ".partial", &lst) == 0 && (lst.st_mode & S_IFMT) == S_IFLNK, "the link is left for its owner to see")
        #expect(!exists(out))
    }

    /// A leftover FILE.partial (a regular file of ours, from a crashed run) is replaced.
    @Test func leftoverPartialIsReplaced() throws {
        let (src, out, data) = prepared(300_000)
        defer { unlink(src); unlink(out); unlink(out + ".partial") }
        writeFile(out + ".partial", Array("stale".utf8))
        let (sent, received) = try transfer(source: src, output: out, options: options())
        #expect(sent.completed && received.completed, "\(received.error?.message ?? "")")
        let same = readFile(out) == data
        #expect(same, "the received bytes differ from those sent")
        #expect(!exists(out + ".partial"))
    }

    /// A receiver that rejects with escape sequences and carriage returns in its message: the
    /// sender's error carries them escaped, never raw.
    @Test func peerMessagesAreEscaped() throws {
        let evil = "\u{1b}[2J\r owned \u{07}\u{9b}31m" + String(repeating: "x", count: 5000)
        #expect(try ErrorMessage.decode(ErrorMessage(code: 1, message: evil).encoded()).message.unicodeScalars.allSatisfy { $0.value >= 0x20 && !(0x7F..<0xA0).contains($0.value) })
        let (src, _, _) = prepared(100_000)
        defer { unlink(src) }
        let (lfd, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        defer { close(lfd) }
        let t = try OSThread(name: "ds-test") {
            let c = accept(lfd, nil, nil)
            var buf = [UInt8](repeating: 0, count: 64)
            _ = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, 64, Int32(MSG_WAITALL)) }
            sendRaw(c, ErrorMessage(code: 2, message: evil).frame(type: .reject))
            shutdown(c, Int32(SHUT_WR))
            usleep(200_000)
            close(c)
        }
        let r = TransferSender.send(try TransferSource(path: src), to: Endpoint(host: "127.0.0.1", port: port),
                                    options: options(connections: 1), warn: { _ in })
        t.join()
        let message = r.error?.message ?? ""
        #expect(!r.completed && r.error?.code == .rejected, "\(message)")
        #expect(message.contains("\\u{1b}[2J\\u{d} owned \\u{7}\\u{9b}31m"), "\(message)")
        #expect(!message.unicodeScalars.contains { $0.value < 0x20 || (0x7F..<0xA0).contains($0.value) })
        #expect(message.count < 1000, "bounded: \(message.count) characters")
    }

    /// The producer pauses for 2.5 s — longer than the receiver's 1 s stall timeout — and the
    /// transfer still completes, byte for byte: idle channels send keepalives.
    @Test(arguments: [false, true])
    func pausedProducerIsKeptAlive(tls: Bool) throws {
        let out = tmpPath("hostile-paused-\(tls)")
        defer { unlink(out) }
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let first = testData(3 << 20, seed: 31), second = testData(2 << 20 + 12345, seed: 32)
        var o = options(connections: 2, chunk: 256 << 10, timeout: .seconds(1))
        // Over TLS the keepalives go through the session's records like everything else.
        if tls { o.security = pskOptions().security }
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(10)) }
        let writeEnd = fds[1]
        let writer = try OSThread(name: "ds-test") {
            func put(_ b: [UInt8]) { var off = 0; while off < b.count { let n = b.withUnsafeBytes { write(writeEnd, $0.baseAddress! + off, $0.count - off) }; if n <= 0 { return }; off += n } }
            put(first)
            usleep(2_500_000)
            put(second)
            close(writeEnd)
        }
        signal(SIGPIPE, SIG_IGN)  // if the transfer fails, the writer meets a closed pipe, not a hang
        let sent = try { () throws -> TransferReport in
            let source = try TransferSource(path: "/proc/self/fd/\(fds[0])")
            close(fds[0])
            return TransferSender.send(source, to: receiver.listener.endpoint, options: o, warn: { _ in })
        }()  // the source (the pipe's read end) is closed here
        writer.join(); t.join()
        #expect(sent.completed, "\(sent.error?.message ?? "")")
        #expect(received?.completed == true, "\(received?.error?.message ?? "")")
        let same = readFile(out) == first + second
        #expect(same, "the received bytes differ from those sent")
    }

    /// Keepalives between frames are skipped by the receiver; one with a payload is refused.
    @Test func keepaliveFramesAreSkipped() throws {
        let (src, out, data) = prepared(200_000)
        defer { unlink(src); unlink(out) }
        _ = src
        let o = options(connections: 1, compression: false, timeout: .seconds(1))
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        let fd = rawConnect(receiver.listener.endpoint)
        let chunk = 65536
        let total = data.count
        sendRaw(fd, Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 1, chunkSize: UInt32(chunk),
                             mode: .addressable, totalSize: UInt64(total)).encoded())
        var digest = TransferDigest()
        var index: UInt64 = 0
        var chunks: UInt64 = 0
        for offset in stride(from: 0, to: total, by: chunk) {
            // 3 × 400 ms of keepalives only: more than the 1 s timeout in all.
            if offset == chunk { for _ in 0..<3 { usleep(400_000); sendRaw(fd, controlFrame(.keepalive)) } }
            let piece = Array(data[offset..<min(offset + chunk, total)])
            let sum = piece.withUnsafeBytes { xxh3($0) }
            sendRaw(fd, frameBytes(FrameHeader(type: .data, rawLength: UInt32(piece.count), wireLength: UInt32(piece.count),
                                               position: UInt64(offset), checksum: sum), payload: piece))
            digest.add(index: index, length: piece.count, checksum: sum)
            index += 1; chunks += 1
        }
        sendRaw(fd, controlFrame(.keepalive))
        sendRaw(fd, controlFrame(.channelEnd, payload: ChannelEnd(chunks: chunks, rawBytes: UInt64(total)).encoded()))
        sendRaw(fd, controlFrame(.endOfStream, payload: TransferTotals(chunks: chunks, rawBytes: UInt64(total), wireBytes: 0, digest: digest.value).encoded()))
        t.join()
        close(fd)
        #expect(received?.completed == true, "\(received?.error?.message ?? "")")
        let same = readFile(out) == data
        #expect(same, "the received bytes differ from those sent")
        // A keepalive with a payload is a protocol violation.
        let bad = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        nonisolated(unsafe) var refused: TransferReport?
        let t2 = try OSThread(name: "ds-test") { refused = bad.receive(output: "/dev/null", acceptTimeout: .seconds(5)) }
        let fd2 = rawConnect(bad.listener.endpoint)
        sendRaw(fd2, Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 1, chunkSize: UInt32(chunk),
                              mode: .addressable, totalSize: 100).encoded())
        sendRaw(fd2, controlFrame(.keepalive, payload: [1, 2, 3]))
        t2.join()
        close(fd2)
        #expect(refused?.error?.code == .protocolViolation && refused?.error?.message.contains("keepalive") == true, "\(refused?.error?.message ?? "")")
    }
}

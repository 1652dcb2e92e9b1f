import Testing
import Synchronization
import Glibc
import DSRing
import DSWire
import DSCodec
@testable import DSTransport
import DSTestSupport
import DSSupport

@Suite(.serialized) struct TransferRoundTripTests {
    @Test(arguments: [1, 2, 4], [true, false])
    func fileRoundTrip(connections: Int, compression: Bool) throws {
        let src = tmpPath("src"), out = tmpPath("out")
        defer { unlink(src); unlink(out) }
        let data = testData(3_000_000 + connections * 777, seed: UInt64(connections))
        writeFile(src, data)
        let (sent, received) = try transfer(source: src, output: out, options: options(connections: connections, compression: compression))
        #expect(sent.completed, "\(sent.error?.message ?? "")")
        #expect(received.completed, "\(received.error?.message ?? "")")
        #expect(readFile(out) == data)
        #expect(!exists(out + ".partial"))
        #expect(sent.digest != nil && sent.digest == received.digest)
        #expect(sent.bytes == UInt64(data.count) && received.bytes == UInt64(data.count))
        if compression { #expect(sent.wireBytes < UInt64(data.count)) } else { #expect(sent.wireBytes > UInt64(data.count)) }
    }

    /// The blocking fallback passes the same round trips (forced per transfer here; the CLI
    /// tests force it with DEVSTREAM_IO_BACKEND=blocking).
    @Test(arguments: [1, 3])
    func blockingFallbackRoundTrip(connections: Int) throws {
        let src = tmpPath("src"), out = tmpPath("out")
        defer { unlink(src); unlink(out) }
        let data = testData(2_500_000, seed: 9)
        writeFile(src, data)
        let (sent, received) = try transfer(source: src, output: out, options: options(connections: connections, backend: .blocking))
        #expect(sent.completed && received.completed)
        #expect(sent.backend == .blocking && received.backend == .blocking)
        #expect(readFile(out) == data)
    }

    /// tmpfs in and out: both ends take the inline path (`FileIOPath.inline`: pread and pwrite
    /// on the channel threads, writes serialised, no preallocation), and the bytes and digests
    /// still match, with and without compression, on both backends.
    @Test(arguments: [IOBackendKind.ioUring, .blocking], [true, false])
    func tmpfsRoundTripTakesTheInlinePath(backend: IOBackendKind, compression: Bool) throws {
        let src = "/dev/shm/ds-test-\(getpid())-src", out = "/dev/shm/ds-test-\(getpid())-out"
        defer { unlink(src); unlink(out); unlink(out + ".partial") }
        let data = testData(5_000_000 + 4321, seed: 21)
        writeFile(src, data)
        let source = try TransferSource(path: src)
        #expect(source.ioPath == .inline)
        let sink = try FileSink(path: out, size: UInt64(data.count))
        #expect(sink.ioPath == .inline)
        sink.discard()
        var o = options(connections: 2, compression: compression)
        o.backend = backend
        let (sent, received) = try transfer(source: src, output: out, options: o)
        #expect(sent.completed && received.completed, "\(sent.error?.message ?? "") \(received.error?.message ?? "")")
        #expect(readFile(out) == data)
        #expect(sent.digest != nil && sent.digest == received.digest)
    }

    @Test func emptyFile() throws {
        let src = tmpPath("src"), out = tmpPath("out")
        defer { unlink(src); unlink(out) }
        writeFile(src, [])
        let (sent, received) = try transfer(source: src, output: out, options: options())
        #expect(sent.completed && received.completed)
        #expect(readFile(out) == [])
    }

    /// A pipe in, a pipe out: the ordered path, no seeking at either end.
    @Test(arguments: [1, 3])
    func orderedStreamThroughPipes(connections: Int) throws {
        let data = testData(2_000_000, seed: 5)
        var inPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0]
        #expect(pipe(&inPipe) == 0 && pipe(&outPipe) == 0)
        let writer = try OSThread(name: "ds-test") {
            data.withUnsafeBytes { b in
                var off = 0
                while off < b.count { let n = write(inPipe[1], b.baseAddress! + off, b.count - off); if n <= 0 { break }; off += n }
            }
            close(inPipe[1])
        }
        nonisolated(unsafe) var collected = [UInt8]()
        let reader = try OSThread(name: "ds-test") {
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { read(outPipe[0], $0.baseAddress, $0.count) }
                if n <= 0 { break }
                collected += buf[0..<n]
            }
        }
        let (sent, received) = try transfer(source: "/proc/self/fd/\(inPipe[0])", output: "/proc/self/fd/\(outPipe[1])",
                                            options: options(connections: connections))
        close(outPipe[1])
        writer.join(); reader.join()
        close(inPipe[0]); close(outPipe[0])
        #expect(sent.completed && received.completed, "\(sent.error?.message ?? "") \(received.error?.message ?? "")")
        #expect(collected == data)
        #expect(sent.digest == received.digest)
    }
}

@Suite(.serialized) struct TransferFaultTests {
    func prepared(_ n: Int = 1_500_000) -> (String, String, [UInt8]) {
        preparedFiles("fault", n, seed: 3)
    }

    @Test func connectionRefused() throws {
        let (src, out, _) = prepared()
        defer { unlink(src); unlink(out) }
        let (lfd, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        close(lfd)  // nothing listens there now
        let r = TransferSender.send(try TransferSource(path: src), to: Endpoint(host: "127.0.0.1", port: port), options: options(), warn: { _ in })
        #expect(!r.completed)
        #expect(r.error?.code == .connect)
        #expect(r.error?.message.contains("Connection refused") == true)
    }

    /// Flipped bytes in the preamble, a frame header, a payload and the end-of-stream: the
    /// receiver refuses every one, and no FILE (nor FILE.partial) is left.
    @Test(arguments: [5, 50, 64 + 10, 64 + 40 + 20, 64 + 40 + 30_000, 500_000])
    func flippedByte(at offset: Int) throws {
        let (src, out, _) = prepared()
        defer { unlink(src); unlink(out) }
        let o = options(connections: 1)
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        let proxy = try FaultProxy(to: receiver.listener.endpoint, fault: .flip(at: offset))
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        let sent = TransferSender.send(try TransferSource(path: src), to: proxy.endpoint, options: o, warn: { _ in })
        t.join(); proxy.join()
        #expect(!sent.completed)
        #expect(received?.completed == false)
        #expect(received?.error != nil)
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    @Test(arguments: [0, 30, 64 + 20, 64 + 40 + 5000, 400_000])
    func truncatedStream(after bytes: Int) throws {
        let (src, out, _) = prepared()
        defer { unlink(src); unlink(out) }
        let o = options(connections: 1)
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        let proxy = try FaultProxy(to: receiver.listener.endpoint, fault: .truncate(after: bytes))
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        let sent = TransferSender.send(try TransferSource(path: src), to: proxy.endpoint, options: o, warn: { _ in })
        t.join(); proxy.join()
        #expect(!sent.completed)
        #expect(received?.completed == false)
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    /// The connection dies abruptly (RST) mid-transfer: both ends fail with a message.
    @Test func peerKilledMidTransfer() throws {
        let (src, out, _) = prepared(4_000_000)
        defer { unlink(src); unlink(out) }
        let o = options(connections: 1, compression: false)
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        let proxy = try FaultProxy(to: receiver.listener.endpoint, fault: .kill(after: 2_000_000))
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        let sent = TransferSender.send(try TransferSource(path: src), to: proxy.endpoint, options: o, warn: { _ in })
        t.join(); proxy.join()
        #expect(!sent.completed && sent.error != nil)
        #expect(received?.completed == false)
        #expect(received?.error?.code == .peerClosed)
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    /// A hand-made stream with a frame whose raw length is impossible.
    @Test func impossibleLength() throws {
        let out = tmpPath("out")
        defer { unlink(out) }
        let o = options(connections: 1)
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        let fd = rawConnect(receiver.listener.endpoint)
        let p = Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 1, chunkSize: 65536,
                         mode: .addressable, totalSize: 1 << 20)
        sendRaw(fd, p.encoded())
        sendRaw(fd, frameBytes(FrameHeader(type: .data, rawLength: 1 << 24, wireLength: 1 << 24, position: 0)))
        t.join()
        close(fd)
        #expect(received?.completed == false)
        #expect(received?.error?.code == .protocolViolation)
        #expect(received?.error?.message.contains("raw length") == true)
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    /// A peer claiming an enormous size gets neither a crash nor an allocation sized by the
    /// claim: what it sends is checked against what it claimed, and the receive fails.
    @Test func hugeClaimedSizeIsBounded() throws {
        let o = options(connections: 1)
        // Over Int64.max: refused at the preamble.
        #expect(throws: WireError.self) {
            try Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 1, chunkSize: 65536,
                         mode: .addressable, totalSize: UInt64(Int64.max) + 1).encoded().withUnsafeBytes { try Preamble.decode($0) }
        }
        // 2^62 bytes into /dev/null: one chunk arrives, then the end: incomplete.
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: o, warn: { _ in })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: "/dev/null", acceptTimeout: .seconds(5)) }
        let fd = rawConnect(receiver.listener.endpoint)
        sendRaw(fd, Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 1, chunkSize: 65536,
                             mode: .addressable, totalSize: 1 << 62).encoded())
        let chunk = [UInt8](repeating: 7, count: 65536)
        sendRaw(fd, frameBytes(FrameHeader(type: .data, rawLength: 65536, wireLength: 65536, position: 0,
                                           checksum: chunk.withUnsafeBytes { xxh3($0) }), payload: chunk))
        let end = ChannelEnd(chunks: 1, rawBytes: 65536).encoded()
        sendRaw(fd, frameBytes(FrameHeader(type: .channelEnd, rawLength: UInt32(end.count), wireLength: UInt32(end.count),
                                           checksum: end.withUnsafeBytes { xxh3($0) }), payload: end))
        var d = TransferDigest(); d.add(index: 0, length: 65536, checksum: chunk.withUnsafeBytes { xxh3($0) })
        let totals = TransferTotals(chunks: 1, rawBytes: 65536, wireBytes: 0, digest: d.value).encoded()
        sendRaw(fd, frameBytes(FrameHeader(type: .endOfStream, rawLength: UInt32(totals.count), wireLength: UInt32(totals.count),
                                           checksum: totals.withUnsafeBytes { xxh3($0) }), payload: totals))
        t.join()
        close(fd)
        #expect(received?.completed == false)
        #expect(received?.error?.message.contains("incomplete transfer") == true, "\(received?.error?.message ?? "")")
    }

    /// Something that is not devstream connects first: it is turned away with a warning, the
    /// receive goes on, and the real sender that follows completes.
    @Test func garbageFromANonDevstreamPeer() throws {
        let (src, out, data) = prepared()
        defer { unlink(src); unlink(out) }
        let warnings = Mutex<[String]>([])
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options(),
                                            warn: { w in warnings.withLock { $0.append(w) } })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        let fd = rawConnect(receiver.listener.endpoint)
        sendRaw(fd, Array("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8) + [UInt8](repeating: 0x41, count: 64))
        #expect(closedByPeer(fd), "the stranger is closed")
        close(fd)
        #expect(eventually { warnings.withLock { $0.contains { $0.contains("not a devstream sender") } } }, "\(warnings.withLock { $0 })")
        let sent = TransferSender.send(try TransferSource(path: src), to: receiver.listener.endpoint, options: options(), warn: { _ in })
        t.join()
        #expect(sent.completed, "\(sent.error?.message ?? "")")
        #expect(received?.completed == true, "\(received?.error?.message ?? "")")
        let same = readFile(out) == data
        #expect(same)
    }

    /// Reserved bytes that are not zero: in a preamble the connection is turned away (the
    /// receive goes on); in a frame header of the session, the session fails as a protocol
    /// violation that names them.
    @Test func nonzeroReservedBytesAreRefused() throws {
        let out = tmpPath("reserved-out")
        defer { unlink(out); unlink(out + ".partial") }
        let warnings = Mutex<[String]>([])
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options(connections: 1, timeout: .seconds(2)),
                                            warn: { w in warnings.withLock { $0.append(w) } })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        func sealPreamble(_ b: inout [UInt8]) {
            let sum = b.withUnsafeBytes { fnv1a64(UnsafeRawBufferPointer(rebasing: $0[0..<56])) }
            b.withUnsafeMutableBytes { $0.storeLE(sum, at: 56) }
        }
        let preamble = Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 1, chunkSize: 65536,
                                mode: .addressable, totalSize: 100)
        var bad = preamble.encoded()
        bad[46] = 9
        sealPreamble(&bad)
        let fd0 = rawConnect(receiver.listener.endpoint)
        sendRaw(fd0, bad)
        #expect(closedByPeer(fd0))
        close(fd0)
        #expect(eventually { warnings.withLock { $0.contains { $0.contains("reserved and must be zero") } } }, "\(warnings.withLock { $0 })")
        // The session itself, then a data frame whose reserved bytes are set.
        let fd = rawConnect(receiver.listener.endpoint)
        defer { close(fd) }
        sendRaw(fd, preamble.encoded())
        var frame = frameBytes(FrameHeader(type: .data, rawLength: 100, wireLength: 100, position: 0, checksum: 1),
                               payload: [UInt8](repeating: 0, count: 100))
        frame[33] = 1
        let check = UInt32(truncatingIfNeeded: frame.withUnsafeBytes { fnv1a64(UnsafeRawBufferPointer(rebasing: $0[0..<36])) })
        frame.withUnsafeMutableBytes { $0.storeLE(check, at: 36) }
        sendRaw(fd, frame)
        t.join()
        #expect(received?.completed == false)
        #expect(received?.error?.code == .protocolViolation && received?.error?.message.contains("reserved and must be zero") == true,
                "\(received?.error?.message ?? "")")
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    /// A sender of another wire version (here 2, before zero pages left the wire) is told in a
    /// reject frame which version each side speaks, the receiver's log says the same, and the
    /// receive goes on: the real sender that follows completes.
    @Test func anOlderSenderIsToldBothVersions() throws {
        let src = tmpPath("version-src"), out = tmpPath("version-out")
        defer { unlink(src); unlink(out) }
        let data = testData(200_000, seed: 71)
        writeFile(src, data)
        let warnings = Mutex<[String]>([])
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options(connections: 1),
                                            warn: { w in warnings.withLock { $0.append(w) } })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        var old = Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 1, chunkSize: 65536,
                           mode: .addressable, totalSize: UInt64(data.count)).encoded()
        old.withUnsafeMutableBytes { b in
            b.storeLE(UInt16(2), at: 8)
            b.storeLE(fnv1a64(UnsafeRawBufferPointer(rebasing: b[0..<56])), at: 56)
        }
        let fd = rawConnect(receiver.listener.endpoint)
        sendRaw(fd, old)
        var reply: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            reply += buf[0..<n]
        }
        close(fd)
        let header = reply.count >= FrameHeader.size ? try? reply.withUnsafeBytes { try FrameHeader.decode($0) } : nil
        #expect(header?.type == .reject, "the reply: \(reply.count) bytes")
        let message = reply.count > FrameHeader.size ? (try? ErrorMessage.decode(Array(reply[FrameHeader.size...])))?.message ?? "" : ""
        #expect(message.contains("wire version 2") && message.contains("receiver version \(WireLimits.version)"), "\(message)")
        #expect(eventually { warnings.withLock { $0.contains { $0.contains("wire version 2") && $0.contains("same devstream release") } } },
                "\(warnings.withLock { $0 })")
        let sent = TransferSender.send(try TransferSource(path: src), to: receiver.listener.endpoint, options: options(connections: 1), warn: { _ in })
        t.join()
        #expect(sent.completed && received?.completed == true, "\(sent.error?.message ?? "") \(received?.error?.message ?? "")")
        #expect(readFile(out) == data)
    }

    /// An unrelated sender tries to join while another session holds the receiver: it is
    /// rejected with a message, and the holder's session is not disturbed.
    @Test func unrelatedConnectionIsRejected() throws {
        let (src, out, _) = prepared()
        defer { unlink(src); unlink(out) }
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options(timeout: .seconds(2)), warn: { _ in })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        // Session A: channel 0 of 2 joins and then stalls.
        let fd = rawConnect(receiver.listener.endpoint)
        sendRaw(fd, Preamble(features: [.xxh3], sessionID: SessionID(high: 1, low: 1), channelIndex: 0, channelCount: 2,
                             chunkSize: 65536, mode: .addressable, totalSize: 100).encoded())
        usleep(100_000)
        // Session B: a real sender.
        let intruder = TransferSender.send(try TransferSource(path: src), to: receiver.listener.endpoint, options: options(), warn: { _ in })
        #expect(!intruder.completed)
        #expect(intruder.error?.code == .rejected)
        #expect(intruder.error?.message.contains("busy with another session") == true)
        #expect(receiver.listener.rejectedCount >= 1)
        t.join()
        close(fd)
        // Session A never completed its channels: the receive fails on its own timeout.
        #expect(received?.completed == false)
        #expect(received?.error?.code == .timeout)
    }

    @Test func unwritableOutput() throws {
        let (src, _, _) = prepared()
        defer { unlink(src) }
        let out = "/nonexistent-dir-\(getpid())/file"
        let (sent, received) = try transfer(source: src, output: out, options: options())
        #expect(!received.completed)
        #expect(received.error?.code == .localIO)
        #expect(received.error?.message.contains("cannot write") == true)
        #expect(!sent.completed)
        #expect(sent.error?.message.contains("receiver") == true)
    }

    /// The receiver goes silent: the sender's stall timeout fires.
    @Test func stalledReceiverIsDetected() throws {
        let (src, out, _) = prepared(8_000_000)
        defer { unlink(src); unlink(out) }
        let (lfd, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        defer { close(lfd) }
        // Accepts, answers the preamble, then never reads again.
        let t = try OSThread(name: "ds-test") {
            let c = accept(lfd, nil, nil)
            var buf = [UInt8](repeating: 0, count: 64)
            _ = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, 64, Int32(MSG_WAITALL)) }
            sendRaw(c, ErrorMessage.acceptFrame)
            usleep(2_500_000)
            close(c)
        }
        let o = options(connections: 1, compression: false, timeout: .milliseconds(800))
        let r = TransferSender.send(try TransferSource(path: src), to: Endpoint(host: "127.0.0.1", port: port), options: o, warn: { _ in })
        t.join()
        #expect(!r.completed)
        #expect(r.error?.code == .timeout)
    }
}

/// The runs of a chunk's pages that are not all zero (a partial last page counts as data),
/// joined: (offset, length).
enum PageRuns {
    static func of(_ chunk: [UInt8], page: Int = 4096) -> [(Int, Int)] {
        var out: [(Int, Int)] = []
        var p = 0
        while p < chunk.count {
            let end = min(p + page, chunk.count)
            if end - p < page || chunk[p..<end].contains(where: { $0 != 0 }) {
                if let last = out.last, last.0 + last.1 == p { out[out.count - 1].1 += end - p } else { out.append((p, end - p)) }
            }
            p = end
        }
        return out
    }
}

/// A regular-file output keeps zero pages as holes (`FileSink.write`): the bytes read back are
/// the sender's, zero pages included, and the pages of zeros take no space. Pages are zero
/// wherever a chunk can hold them: a whole chunk, its first and last pages, single pages
/// between data, and the partial page that ends the file.
@Suite struct SparseOutputTests {
    static let page = 4096, chunk = 64 << 10

    /// 5 chunks and 1000 bytes: chunk 1 all zero; chunk 2 zero but for one page in its middle;
    /// chunk 3 with zero first and last pages; every other page of chunk 4 zero; the last 1000
    /// bytes zero (on top of the zero runs `testData` makes).
    static func input() -> [UInt8] {
        var data = testData(5 * chunk + 1000, seed: 61)
        func zero(_ r: Range<Int>) { for i in r { data[i] = 0 } }
        zero(chunk..<2 * chunk)
        zero(2 * chunk..<2 * chunk + 7 * page); zero(2 * chunk + 8 * page..<3 * chunk)
        zero(3 * chunk..<3 * chunk + page); zero(4 * chunk - page..<4 * chunk)
        for p in stride(from: 0, to: 16, by: 2) { zero(4 * chunk + p * page..<4 * chunk + (p + 1) * page) }
        zero(5 * chunk..<data.count)
        return data
    }

    /// Pages (the last one partial) that hold a non-zero byte.
    static func dataPages(_ data: [UInt8]) -> Int {
        stride(from: 0, to: data.count, by: page).filter { p in data[p..<min(p + page, data.count)].contains { $0 != 0 } }.count
    }

    /// On tmpfs (`/dev/shm`: inline writes), and on the disk-backed /tmp (writes through the
    /// ring from registered slots, the output preallocated).
    @Test(arguments: [false, true], [true, false])
    func zeroPagesAreHolesAndReadBackAsZeros(compression: Bool, tmpfs: Bool) throws {
        let data = Self.input()
        let src = tmpPath("sparse-src")
        let out = tmpfs ? "/dev/shm/dstransport-\(getpid())-\(UInt32.random(in: 0...UInt32.max))-sparse-out" : tmpPath("sparse-out")
        defer { unlink(src); unlink(out) }
        writeFile(src, data)
        let (sent, received) = try transfer(source: src, output: out, options: options(connections: 2, compression: compression, chunk: Self.chunk))
        #expect(sent.completed && received.completed, "\(sent.error?.message ?? "") \(received.error?.message ?? "")")
        #expect(readFile(out) == data, "the output differs from the input")
        var st = stat()
        #expect(stat(out, &st) == 0 && st.st_size == off_t(data.count))
        guard tmpfs else { return }  // a disk file was preallocated whole: no holes to count
        // tmpfs with 4 KiB pages (Debian's default, huge=never) allocates a page per page
        // written: the data pages and nothing for the zeros.
        let dataPages = Self.dataPages(data), pages = (data.count + Self.page - 1) / Self.page
        #expect(dataPages > 0 && dataPages <= pages - 42, "the input: \(dataPages) of \(pages) pages hold data")
        #expect(Int(st.st_blocks) * 512 == dataPages * Self.page,
                "\(st.st_blocks * 512) bytes allocated for \(dataPages) pages of data, \(pages - dataPages) of zeros (on a tmpfs with huge pages this count does not hold)")
    }

    /// The sender leaves each chunk's whole zero pages off the wire: played by hand, the receiver
    /// sees every data frame of a chunk with a zero page flagged `zeroPages`, carrying exactly the
    /// chunk's non-zero runs at their offsets (the partial last page included), and the chunks
    /// without one whole and unflagged. With compression off every chunk goes whole.
    @Test(arguments: [true, false])
    func zeroPagesStayOffTheWire(compression: Bool) throws {
        let data = Self.input()
        let src = tmpPath("zero-wire-src")
        defer { unlink(src) }
        writeFile(src, data)
        let (lfd, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        defer { close(lfd) }
        nonisolated(unsafe) var frames: [(FrameHeader, [UInt8])] = []
        let t = try OSThread(name: "ds-test") {
            let c = accept(lfd, nil, nil)
            defer { close(c) }
            func take(_ n: Int) -> [UInt8]? {
                var b = [UInt8](repeating: 0, count: n)
                let got = n == 0 ? 0 : b.withUnsafeMutableBytes { recv(c, $0.baseAddress, n, Int32(MSG_WAITALL)) }
                return got == n ? b : nil
            }
            guard take(Preamble.size) != nil else { return }
            sendRaw(c, ErrorMessage.acceptFrameForTests)
            while let hb = take(FrameHeader.size), let h = try? hb.withUnsafeBytes({ try FrameHeader.decode($0) }),
                  let payload = take(Int(h.wireLength)) {
                guard h.type == .data else { break }
                var raw = payload
                if h.flags.contains(.lz4) {
                    raw = [UInt8](repeating: 0, count: Int(h.rawLength))
                    let ok = payload.withUnsafeBytes { w in raw.withUnsafeMutableBytes { r in
                        (try? ChunkDecoder.decompress(w, rawLength: Int(h.rawLength), checksum: h.checksum, into: r)) != nil } }
                    guard ok else { break }
                }
                frames.append((h, raw))
            }
        }
        let sent = TransferSender.send(try TransferSource(path: src), to: Endpoint(host: "127.0.0.1", port: port),
                                       options: options(connections: 1, compression: compression, chunk: Self.chunk, timeout: .seconds(2)),
                                       warn: { _ in })
        t.join()
        #expect(!sent.completed, "nobody acked")
        let chunks = (data.count + Self.chunk - 1) / Self.chunk
        #expect(frames.count == chunks, "\(frames.count) data frames for \(chunks) chunks")
        for (h, raw) in frames {
            let start = Int(h.position), chunk = Array(data[start..<min(start + Self.chunk, data.count)])
            let runs = PageRuns.of(chunk)
            let hasZeroPage = runs.reduce(0) { $0 + $1.1 } < chunk.count  // a partial page counts as data
            guard compression, hasZeroPage else {
                #expect(!h.flags.contains(.zeroPages) && raw == chunk, "chunk at \(start) went whole")
                continue
            }
            #expect(h.flags.contains(.zeroPages), "chunk at \(start) has zero pages but went whole")
            var extents: [(Int, [UInt8])] = []
            raw.withUnsafeBytes { p in
                try? ExtentTable.parsePacked(p, chunkLength: UInt64(chunk.count)).forEach { off, bytes in extents.append((Int(off), Array(bytes))) }
            }
            #expect(extents.map { $0.0 } == runs.map { $0.0 } && extents.map { $0.1.count } == runs.map { $0.1 },
                    "chunk at \(start): extents \(extents.map { ($0.0, $0.1.count) }), expected \(runs)")
            #expect(extents.allSatisfy { Array(chunk[$0.0..<$0.0 + $0.1.count]) == $0.1 }, "chunk at \(start): the extents' bytes")
        }
    }

    /// A packed chunk whose table is malformed fails the receive as a protocol violation that
    /// names the chunk and what is wrong; nothing is written and no file is left behind.
    @Test(arguments: [
        ([(UInt64(60_000), UInt32(8_000))], "outside the device"),
        ([(8192, 4096), (0, 4096)], "overlaps or precedes"),
    ] as [([(UInt64, UInt32)], String)])
    func aMalformedPackedChunkIsRefused(extents: [(UInt64, UInt32)], says: String) throws {
        let out = tmpPath("packed-bad-out")
        defer { unlink(out); unlink(out + ".partial") }
        let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options(connections: 1, timeout: .seconds(2)), warn: { _ in })
        nonisolated(unsafe) var received: TransferReport?
        let t = try OSThread(name: "ds-test") { received = receiver.receive(output: out, acceptTimeout: .seconds(5)) }
        let fd = rawConnect(receiver.listener.endpoint)
        defer { close(fd) }
        sendRaw(fd, Preamble(features: [.xxh3], sessionID: .random(), channelIndex: 0, channelCount: 1, chunkSize: UInt32(Self.chunk),
                             mode: .addressable, totalSize: UInt64(3 * Self.chunk)).encoded())
        var payload = [UInt8](repeating: 9, count: extents.reduce(0) { $0 + Int($1.1) })
        for (o, l) in extents { payload.appendLE(o); payload.appendLE(l) }
        payload.appendLE(UInt16(extents.count)); payload.appendLE(UInt16(0))
        sendRaw(fd, frameBytes(FrameHeader(type: .data, flags: .zeroPages, rawLength: UInt32(payload.count), wireLength: UInt32(payload.count),
                                           position: UInt64(Self.chunk), checksum: payload.withUnsafeBytes { xxh3($0) }), payload: payload))
        t.join()
        let message = received?.error?.message ?? ""
        #expect(received?.completed == false && received?.error?.code == .protocolViolation, "\(message)")
        #expect(message.contains("chunk at offset \(Self.chunk)") && message.contains(says), "\(message)")
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    /// An output written in place (a device, a pipe: here a FIFO read by a thread) gets every
    /// byte, zeros included: only a file this receive created may keep holes.
    @Test func inPlaceOutputsGetEveryByte() throws {
        let data = Self.input()
        let src = tmpPath("sparse-src2"), fifo = tmpPath("sparse-fifo")
        defer { unlink(src); unlink(fifo) }
        writeFile(src, data)
        #expect(mkfifo(fifo, 0o600) == 0)
        nonisolated(unsafe) var got: [UInt8] = []
        let reader = try OSThread(name: "ds-test") {
            let fd = open(fifo, O_RDONLY)
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                got += buf[0..<n]
            }
            close(fd)
        }
        let (sent, received) = try transfer(source: src, output: fifo, options: options(connections: 2, chunk: Self.chunk))
        reader.join()
        #expect(sent.completed && received.completed, "\(sent.error?.message ?? "") \(received.error?.message ?? "")")
        #expect(got == data)
    }
}

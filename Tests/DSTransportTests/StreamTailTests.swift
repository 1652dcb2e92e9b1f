import Testing
import Synchronization
import Glibc
import DSRing
import DSWire
@testable import DSTransport
import DSTestSupport
import DSSupport

/// The tail of an ordered stream (`devstream send -`): a producer that writes less than a chunk
/// and then waits must see those bytes at the receiver while its input is still open, not when
/// it writes more or closes. These tests check where the bytes are, not how fast they got there.
@Suite(.serialized) struct StreamTailTests {
    /// A pipe in, a pipe out, a reader that collects the output, and a writer the test drives.
    final class Pipes: @unchecked Sendable {
        // @unchecked: `collected` and `reports` are under their mutexes; the fds and threads are
        // set by the test's own thread (init, `startTransfer`) and closed or joined once by it
        // (`finish`).
        let inRead: Int32, inWrite: Int32, outRead: Int32, outWrite: Int32
        let collected = Mutex<[UInt8]>([])
        private let reports = Mutex<(sent: TransferReport?, received: TransferReport?)>((nil, nil))
        private var reader: OSThread?, sending: OSThread?, receiving: OSThread?

        init() throws {
            var i: [Int32] = [0, 0], o: [Int32] = [0, 0]
            guard pipe(&i) == 0, pipe(&o) == 0 else { throw TransferError(.localIO, "pipe: \(Errno.current)") }
            (inRead, inWrite, outRead, outWrite) = (i[0], i[1], o[0], o[1])
            let fd = outRead
            reader = try OSThread(name: "ds-test") { [self] in
                var buf = [UInt8](repeating: 0, count: 65536)
                while true {
                    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if n <= 0 { break }
                    collected.withLock { $0 += buf[0..<n] }
                }
            }
        }

        func write(_ bytes: [UInt8]) {
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.write(inWrite, $0.baseAddress! + off, $0.count - off) }
                if n <= 0 { return }
                off += n
            }
        }

        /// Waits until the output holds `count` bytes; false if it does not within `limit` (a
        /// bound so a held chunk fails the test instead of hanging it, not a measurement).
        func waitForOutput(_ count: Int, limit: Duration = .seconds(10)) -> Bool {
            let end = Monotonic.now + limit
            while Monotonic.now < end {
                if collected.withLock({ $0.count }) >= count { return true }
                usleep(1000)
            }
            return false
        }

        /// Starts a receiver writing into the output pipe and a sender reading the input pipe,
        /// each on its own thread, with `options` at both ends.
        func startTransfer(_ options: TransferOptions) throws {
            let receiver = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options, warn: { _ in })
            let output = "/proc/self/fd/\(outWrite)"
            receiving = try OSThread(name: "ds-test") { [self] in
                reports.withLock { $0.received = receiver.receive(output: output, acceptTimeout: .seconds(10)) }
            }
            let source = try TransferSource(path: "/proc/self/fd/\(inRead)")
            let endpoint = receiver.listener.endpoint
            sending = try OSThread(name: "ds-test") { [self] in
                let r = TransferSender.send(source, to: endpoint, options: options, warn: { _ in })
                reports.withLock { $0.sent = r }
            }
        }

        /// Ends the input, waits for both ends and the reader; returns both reports and every
        /// byte the reader got from the output.
        func finish() -> (sent: TransferReport?, received: TransferReport?, output: [UInt8]) {
            close(inWrite)
            sending?.join(); receiving?.join()
            close(inRead)
            close(outWrite)
            reader?.join()
            close(outRead)
            // The threads' closures hold this object: dropping them breaks the cycle (LeakSanitizer).
            (reader, sending, receiving) = (nil, nil, nil)
            let r = reports.withLock { $0 }
            return (r.sent, r.received, collected.withLock { $0 })
        }
    }

    /// Two bursts smaller than a chunk, each followed by a pause with the input still open: each
    /// must reach the receiver's output before the next is written (the old reader held a partial
    /// chunk until its input ended, so the first wait failed). Then the input closes, and the
    /// transfer completes with equal digests and the bytes in order.
    @Test(arguments: [(1, false), (2, false), (2, true)])
    func partialChunkLeavesBeforeEndOfInput(connections: Int, tls: Bool) throws {
        let p = try Pipes()
        var o = options(connections: connections, chunk: 256 << 10)
        if tls { o.security = pskOptions().security }
        try p.startTransfer(o)
        let first = testData(100_000, seed: 41), second = testData(37_000, seed: 42)
        p.write(first)
        let firstArrived = p.waitForOutput(first.count)
        #expect(firstArrived, "the first 100000 bytes (less than a 256 KiB chunk) did not reach the output while the input stayed open")
        p.write(second)
        let secondArrived = p.waitForOutput(first.count + second.count)
        #expect(secondArrived, "the second burst did not reach the output while the input stayed open")
        let (sent, received, out) = p.finish()
        #expect(sent?.completed == true, "\(sent?.error?.message ?? "")")
        #expect(received?.completed == true, "\(received?.error?.message ?? "")")
        #expect(out == first + second)
        #expect(sent?.digest != nil && sent?.digest == received?.digest)
        // Each burst left as its own chunk (at least two), none of them empty.
        #expect((sent?.chunks ?? 0) >= 2 && sent?.bytes == UInt64(first.count + second.count))
    }

    /// The end of a burst: the input holds less than a chunk and stays open (the producer
    /// waits). What it holds leaves in tail pieces (half a chunk, at least 64 KiB) that the
    /// channels and the receiver work on at once, not as one chunk that one channel carries
    /// through every stage alone, and all of it reaches the output before the input ends. An
    /// input holding a whole chunk's worth still gives a whole chunk. The burst is queued before
    /// the transfer starts, so the frames are exact: 200 000 bytes at 128 KiB chunks are one
    /// whole chunk (131 072), then a 64 KiB piece and 3 392 bytes (without pieces: two chunks).
    @Test func aBurstsLastChunkLeavesInPieces() throws {
        #expect(TransferSource.tailPiece(chunkSize: 1 << 20) == 512 << 10)
        #expect(TransferSource.tailPiece(chunkSize: 256 << 10) == 128 << 10)
        #expect(TransferSource.tailPiece(chunkSize: 128 << 10) == 64 << 10)
        #expect(TransferSource.tailPiece(chunkSize: 64 << 10) == nil)
        let p = try Pipes()
        #expect(fcntl(p.inWrite, 1031 /* F_SETPIPE_SZ */, Int32(1 << 20)) >= 1 << 20, "a 1 MiB pipe")
        let burst = testData(200_000, seed: 44)
        p.write(burst)
        try p.startTransfer(options(connections: 2, chunk: 128 << 10))
        let arrived = p.waitForOutput(burst.count)
        #expect(arrived, "the burst did not reach the output while the input stayed open")
        let (sent, received, out) = p.finish()
        #expect(sent?.completed == true && received?.completed == true, "\(sent?.error?.message ?? "") \(received?.error?.message ?? "")")
        #expect(out == burst)
        #expect(sent?.digest != nil && sent?.digest == received?.digest)
        #expect(sent?.chunks == 3, "\(sent?.chunks ?? 0) chunks for 200000 bytes: 128 KiB whole, then 64 KiB pieces")
    }

    /// A pipe that cannot be grown to a chunk (chunks above pipe-max-size) never holds a chunk's
    /// worth, so it gets no tail pieces: they would halve every chunk of a steady producer. A
    /// full pipe's worth, queued before the transfer starts, leaves as one chunk (with pieces
    /// it would be two: half a chunk is less than the pipe).
    @Test func aPipeThatCannotHoldAChunkGetsNoPieces() throws {
        let pipeMax = Int(try #require(FileSystem.pipeMaxSize()))
        let chunk = pipeMax + (512 << 10)
        try #require(chunk <= 16 << 20 && chunk / 2 < pipeMax, "pipe-max-size \(pipeMax)")
        let p = try Pipes()
        #expect(fcntl(p.inWrite, 1031 /* F_SETPIPE_SZ */, Int32(pipeMax)) >= Int32(pipeMax))
        let burst = testData(pipeMax, seed: 45)
        p.write(burst)
        try p.startTransfer(options(connections: 2, chunk: chunk))
        let arrived = p.waitForOutput(burst.count)
        #expect(arrived, "the pipe's worth did not reach the output while the input stayed open")
        let (sent, received, out) = p.finish()
        #expect(sent?.completed == true && received?.completed == true, "\(sent?.error?.message ?? "") \(received?.error?.message ?? "")")
        #expect(out == burst)
        #expect(sent?.chunks == 1, "\(sent?.chunks ?? 0) chunks for a \(pipeMax)-byte pipe and \(chunk)-byte chunks")
    }

    /// A steady producer (the input refilled faster than it is read) still fills whole chunks:
    /// sending partial chunks is for an input that has nothing ready, not a smaller chunk size.
    /// The whole input is queued in a 1 MiB pipe before the first read, so every read finds
    /// data: every chunk but the last must be full.
    @Test func steadyInputFillsWholeChunks() throws {
        let chunk = 64 << 10
        let data = testData(15 * chunk + 123, seed: 43)
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        #expect(fcntl(fds[1], 1031 /* F_SETPIPE_SZ: Glibc does not import it */, Int32(1 << 20)) >= data.count, "a 1 MiB pipe")
        data.withUnsafeBytes { b in
            var off = 0
            while off < b.count { let n = write(fds[1], b.baseAddress! + off, b.count - off); if n <= 0 { break }; off += n }
        }
        close(fds[1])
        let out = tmpPath("steady")
        defer { unlink(out) }
        let (sent, received) = try transfer(source: "/proc/self/fd/\(fds[0])", output: out, options: options(connections: 2, chunk: chunk))
        close(fds[0])
        #expect(sent.completed && received.completed, "\(sent.error?.message ?? "") \(received.error?.message ?? "")")
        #expect(readFile(out) == data)
        #expect(sent.chunks == 16, "\(sent.chunks) chunks for 15 full chunks and 123 bytes")
    }
}

/// `wire_bytes`: every frame after admission, both ways, keepalives included, the same figure at
/// both ends (the pacer's keepalives used to be counted by the receiver only).
@Suite(.serialized) struct WireBytesTests {
    /// A producer pauses long enough for keepalives on both channels; both ends count them, and
    /// the figure is exactly the frames: data (header + raw bytes, compression off), two channel
    /// ends, the end of stream and its ack, and 40 bytes a keepalive.
    @Test(arguments: [false, true])
    func equalAtBothEndsWithKeepalives(tls: Bool) throws {
        let p = try StreamTailTests.Pipes()
        var o = options(connections: 2, compression: false, chunk: 64 << 10, timeout: .seconds(1))  // keepalives after 250 ms
        if tls { o.security = pskOptions().security }
        try p.startTransfer(o)
        let first = testData(150_000, seed: 51), second = testData(90_000, seed: 52)
        p.write(first)
        usleep(800_000)  // both channels idle: one waits on the input, the other on the reader's turn
        p.write(second)
        let (sentReport, receivedReport, out) = p.finish()
        guard let sent = sentReport, let received = receivedReport else { Issue.record("no report"); return }
        #expect(sent.completed && received.completed, "\(sent.error?.message ?? "") \(received.error?.message ?? "")")
        #expect(out == first + second)
        #expect(sent.keepalives > 0, "the pause produced no keepalive")
        #expect(sent.keepalives == received.keepalives)
        #expect(sent.wireBytes == received.wireBytes, "sender \(sent.wireBytes), receiver \(received.wireBytes)")
        let header = UInt64(FrameHeader.size)
        let channelEnds = 2 * (header + UInt64(ChannelEnd(chunks: 0, rawBytes: 0).encoded().count))
        let totals = 2 * (header + UInt64(TransferTotals(chunks: 0, rawBytes: 0, wireBytes: 0, digest: 0).encoded().count))
        let expected = sent.chunks * header + sent.bytes + channelEnds + totals + sent.keepalives * header
        #expect(sent.wireBytes == expected, "\(sent.wireBytes) reported, \(expected) in the frames")
    }

    /// Without keepalives (a regular file), the figures agree as well.
    @Test func equalAtBothEndsForAFile() throws {
        let src = tmpPath("wire-src"), out = tmpPath("wire-out")
        defer { unlink(src); unlink(out) }
        writeFile(src, testData(700_000, seed: 53))
        let (sent, received) = try transfer(source: src, output: out, options: options(connections: 3))
        #expect(sent.completed && received.completed)
        #expect(sent.keepalives == 0 && received.keepalives == 0)
        #expect(sent.wireBytes == received.wireBytes, "sender \(sent.wireBytes), receiver \(received.wireBytes)")
    }
}

import Glibc
import Synchronization
import DSRing
import DSWire
import DSCodec
import DSSupport

/// Where a sender's bytes come from.
package final class TransferSource: @unchecked Sendable {
    // @unchecked: `fd`, `mode`, `size` are immutable; the ordered reader's position is guarded
    // by `lock`; `nextChunk` is atomic.
    package let fd: Int32
    package let mode: TransferMode
    /// Total bytes (addressable), or nil for a stream.
    package let size: UInt64?
    package let name: String
    /// How channels read it: `.inline` (pread on the channel thread) for a file on tmpfs, where
    /// io_uring would punt every read to a worker thread; else through the ring.
    package let ioPath: FileIOPath
    private let ownsFD: Bool
    private let nextChunk = Atomic<UInt64>(0)
    /// False for a pipe too small to hold a chunk (`growPipe`).
    private let tailPiecesAllowed = Atomic<Bool>(true)
    private let lock = ConditionLock()
    private var nextSequence: UInt64 = 0
    private var ended = false

    /// Opens `path` (`-` for stdin). Regular files and block devices are addressable; pipes,
    /// character devices and stdin are ordered streams.
    package init(path: String) throws(TransferError) {
        name = path
        if path == "-" {
            fd = 0; ownsFD = false
        } else {
            fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                let e = Errno.current
                throw TransferError(.localIO, "cannot open '\(path)' for reading: \(e)")
            }
            ownsFD = true
        }
        let opened = fd, owns = ownsFD
        func fail(_ e: TransferError) -> TransferError {
            if owns { close(opened) }  // init failed: deinit will not run
            return e
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw fail(TransferError(.localIO, "cannot stat '\(path)': \(Errno.current)")) }
        switch st.st_mode & S_IFMT {
        case S_IFREG:
            mode = .addressable; size = UInt64(st.st_size)
        case S_IFBLK:
            var bytes: UInt64 = 0
            guard ioctl(fd, 0x8008_1272 /* BLKGETSIZE64 */, &bytes) == 0 else {
                throw fail(TransferError(.localIO, "cannot read the size of block device '\(path)': \(Errno.current)"))
            }
            mode = .addressable; size = bytes
        case S_IFDIR:
            throw fail(TransferError(.usage, "'\(path)' is a directory; send a file, a block device or - (stdin)"))
        default:
            mode = .ordered; size = nil
        }
        ioPath = FileIOPath.forFile(fd)
    }

    deinit { if ownsFD { close(fd) } }

    /// For a pipe: a pipe buffer of one chunk, so steady input fills whole chunks
    /// (`FileSystem.growPipe` says why). A pipe that stays smaller (the per-user pipe memory
    /// limit, pipe-max-size) can never hold a chunk's worth, so it gets no tail pieces: they
    /// would halve every chunk of a steady producer.
    func growPipe(toHold chunkSize: Int) {
        guard mode == .ordered, let size = FileSystem.growPipe(fd, toHold: chunkSize) else { return }
        if size < chunkSize { tailPiecesAllowed.store(false, ordering: .relaxed) }
    }

    /// How much of a chunk the input cannot fill now goes in one frame (`Ring.readWhileReady`'s
    /// tail pieces): half a chunk, at least 64 KiB, in whole pages; none below 128 KiB chunks.
    /// Half, measured (`stream-bench tail`, 1 MiB chunks, six alternating pairs): a 2500 KiB
    /// burst's median tail over plain TCP went from +1.49 to +1.27 ms (PSK +1.99 to +1.73), and
    /// a 300 KiB one stayed at +0.23–0.27 ms. Quarter pieces gave +1.13–1.47 ms for the large
    /// burst but +0.47–0.56 ms for the small one, which they cut in two (README: the stream's tail).
    static func tailPiece(chunkSize: Int) -> Int? {
        chunkSize >= 128 << 10 ? max(64 << 10, chunkSize / 2 & ~4095) : nil
    }

    /// Reads the next chunk into `channel.readBuffer` and sends it. Called concurrently by
    /// every channel thread. Returns false when there is nothing left.
    func sendNext(on channel: Channel, progress: TransferProgress) throws(TransferError) -> Bool {
        let chunk = UInt64(channel.chunkSize)
        let buf = channel.readBuffer
        switch mode {
        case .addressable:
            let total = size ?? 0
            let i = nextChunk.add(1, ordering: .relaxed).oldValue
            let offset = i * chunk
            guard offset < total else { return false }
            let length = Int(min(chunk, total - offset))
            let n: Int
            do { n = try channel.ring.readFully(fd: fd, into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<length]), offset: offset, slot: channel.inSlot, path: ioPath) } catch {
                throw TransferError(.localIO, "reading '\(name)' at offset \(offset) failed: \(error)")
            }
            guard n == length else {
                throw TransferError(.localIO, "'\(name)' shrank while being sent (short read at offset \(offset)); nothing was reported complete")
            }
            let before = channel.stats.wireBytes
            // With compression on, a chunk's zero pages stay home (`ExtentTable.packZeroPages`).
            let packed = channel.compresses ? ExtentTable.packZeroPages(buf, length: length) : nil
            try channel.sendChunk(type: .data, position: offset, length: packed ?? length, chunkLength: length, digestIndex: i,
                                  flags: packed == nil ? [] : .zeroPages)
            progress.add(bytes: UInt64(length), wire: channel.stats.wireBytes - before)
            return true
        case .ordered, .migration:
            // One reader at a time keeps the order; the sequence number is taken with the read.
            // A chunk is filled while the input has data ready and sent as soon as it has none
            // (`readWhileReady`): a paused producer's last bytes leave at once, not when it
            // writes more or closes its end (the stream's tail), and a steady producer still
            // fills whole chunks.
            let tailPiece = tailPiecesAllowed.load(ordering: .relaxed) ? Self.tailPiece(chunkSize: channel.chunkSize) : nil
            var seq: UInt64 = 0
            var n = 0
            var failure: Errno?
            lock.withLock {
                guard !ended else { return }
                do { n = try channel.ring.readWhileReady(fd: fd, into: buf, slot: channel.inSlot, tailPiece: tailPiece) } catch {
                    failure = (error as? Errno) ?? Errno(rawValue: EIO)
                    return
                }
                if n == 0 { ended = true; return }
                seq = nextSequence
                nextSequence += 1
            }
            if let failure { throw TransferError(.localIO, "reading '\(name)' failed: \(failure)") }
            if n == 0 { return false }
            let before = channel.stats.wireBytes
            try channel.sendChunk(type: .streamData, position: seq, length: n, digestIndex: seq)
            progress.add(bytes: UInt64(n), wire: channel.stats.wireBytes - before)
            return true
        }
    }
}

/// The sending end of a point-to-point transfer (`devstream send`).
///
/// Threading: one `WorkerGroup` thread per connection; each owns a ring, a two-slot registered
/// pool and an LZ4 state, and runs read → hash/compress → send for the chunks it claims. The
/// caller's thread only sends the end-of-stream totals on channel 0 and waits for the ack.
package enum TransferSender {
    package static func send(_ source: TransferSource, to endpoint: Endpoint, options: TransferOptions,
                            progress: TransferProgress = TransferProgress(),
                            warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) -> TransferReport {
        let start = Monotonic.now
        let backend = IOBackend.resolve(options.backend, warn: warn)
        var report = TransferReport(completed: false, connections: options.connections, compression: options.compression, backend: backend)
        report.protection = options.protection
        do {
            try options.validate()
            if let size = source.size { progress.total.store(size, ordering: .relaxed) }
            let (totals, traffic, ran) = try run(source, endpoint, options, backend, progress, warn)
            if let ran { report.backend = ran }
            report.completed = true
            report.bytes = totals.rawBytes
            report.chunks = totals.chunks
            (report.wireBytes, report.keepalives) = traffic
            report.digest = totals.digest
        } catch {
            report.error = error
            report.bytes = progress.bytes
            report.wireBytes = progress.wireBytes
        }
        report.elapsed = Monotonic.now - start
        return report
    }

    private static func run(_ source: TransferSource, _ endpoint: Endpoint, _ options: TransferOptions,
                            _ backend: IOBackendKind, _ progress: TransferProgress,
                            _ warn: @escaping @Sendable (String) -> Void) throws(TransferError) -> (TransferTotals, (UInt64, UInt64), IOBackendKind?) {
        let abort = AbortSignal(side: "sender")
        let (group, connections) = try ChannelSet.connect(to: endpoint, options: options, mode: source.mode, totalSize: source.size,
                                                      abort: abort, backend: backend, warn: warn)
        defer { for c in connections { c.close() } }
        defer { group.shutdown() }

        // Keepalives while a channel waits on its input (a paused pipe): the receiver's stall
        // timeout is for a silent network, not a paused producer. A regular file never pauses.
        let pacer: KeepalivePacer?
        do throws(TransferError) {
            pacer = source.mode == .addressable ? nil
                : try KeepalivePacer(interval: KeepalivePacer.interval(timeout: options.timeout), abort: abort)
        } catch {
            abort.abort(error)  // tell the receiver why
            throw error
        }
        defer { pacer?.stop() }

        source.growPipe(toHold: options.chunkSize)

        // Data: every channel claims chunks until the source is exhausted, then ends its channel.
        let merged = Mutex(ChannelStats())
        let rings = RingBackends()
        try group.run { (_, ch) throws(TransferError) in
            rings.add(ch.ring)
            pacer?.add(ch.connection)
            while try source.sendNext(on: ch, progress: progress) {
                if abort.isAborted { return }
            }
            try ch.sendControl(.channelEnd, payload: ChannelEnd(chunks: ch.stats.chunks, rawBytes: ch.stats.rawBytes).encoded())
            ch.connection.sendTurn.retire()
            let s = ch.stats
            merged.withLock { $0.merge(s) }
        }
        pacer?.stop()
        let stats = merged.withLock { $0 }
        let totals = TransferTotals(chunks: stats.chunks, rawBytes: stats.rawBytes, wireBytes: stats.wireBytes, digest: stats.digest.value)

        // End of stream on channel 0, then wait for the receiver's ack: it has written and
        // synced everything and verified the totals.
        try group.run(only: 0) { (_, ch) throws(TransferError) in
            try ch.sendControl(.endOfStream, payload: totals.encoded())
            let reply = try ch.receive(timeout: options.timeout + .seconds(60))
            guard reply.header.type == .ack else { throw Channel.unexpected(reply, expecting: "ack", channel: 0) }
            let acked: TransferTotals
            do { acked = try TransferTotals.decode(reply.control) } catch {
                throw TransferError(.protocolViolation, "malformed ack from the receiver: \(error)")
            }
            guard acked.chunks == totals.chunks, acked.rawBytes == totals.rawBytes, acked.digest == totals.digest else {
                throw TransferError(.corruption, "the receiver acknowledged different totals (\(acked.rawBytes) bytes, digest \(TransferDigest.hex(acked.digest))) than were sent (\(totals.rawBytes) bytes, digest \(TransferDigest.hex(totals.digest)))")
            }
        }
        // Every frame both ways, the ack and the keepalives included: what the receiver counts.
        return (totals, group.traffic(), rings.single)
    }
}

/// The backends the channels' rings actually ran on, so a report states what ran, not what was
/// asked for.
final class RingBackends: Sendable {
    private let seen = Mutex<Set<IOBackendKind>>([])
    func add(_ ring: Ring) { seen.withLock { _ = $0.insert(ring.backend) } }
    /// The one backend every ring ran on (nil: none ran, or they differed).
    var single: IOBackendKind? { seen.withLock { $0.count == 1 ? $0.first : nil } }
}

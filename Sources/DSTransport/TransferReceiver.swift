import Glibc
import Synchronization
import DSRing
import DSWire
import DSCodec
import DSSupport

/// The receiving end of a point-to-point transfer (`devstream receive --output`).
///
/// The listener accepts the session's N connections; then one `WorkerGroup` thread per channel
/// (its own ring and two-slot registered pool) receives frames, validates the header before
/// anything else, decodes with `LZ4_decompress_safe`, verifies the XXH3, and writes at the
/// chunk's offset (or in order, for streams and unseekable outputs). Nothing is reported
/// complete — and `FILE.partial` is not renamed to `FILE` — until every chunk is covered, the
/// totals and digest match the sender's end-of-stream, and the data is fsynced.
package final class TransferReceiver {
    package let listener: SessionListener
    package let options: TransferOptions
    package let progress = TransferProgress()
    private let warn: @Sendable (String) -> Void

    /// Binds `endpoint` (port 0 picks one: see `listener.endpoint`) and starts accepting.
    package init(listen endpoint: Endpoint, options: TransferOptions,
                warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        try options.validate()
        self.options = options
        self.warn = warn
        listener = try SessionListener(endpoint: endpoint, options: options, warn: warn)
        try listener.start()
    }

    /// A receiver dropped without `receive` stops its listener here: the listener's threads
    /// hold the listener, not this object, so nothing else would.
    deinit { listener.stop() }

    /// Receives one transfer into `output` (a path, or `-` for stdout).
    /// - Parameter acceptTimeout: how long to wait for a sender (nil: forever).
    package func receive(output: String, acceptTimeout: Duration? = nil) -> TransferReport {
        let backend = IOBackend.resolve(options.backend, warn: warn)
        var report = TransferReport(completed: false, connections: 0, compression: false, backend: backend)
        report.protection = options.protection
        var start = Monotonic.now
        var sink: FileSink?
        do throws(TransferError) {
            let (session, connections) = try listener.waitForSession(timeout: acceptTimeout)
            start = Monotonic.now
            report.connections = session.channelCount
            report.compression = session.features.contains(.lz4)
            if let t = session.totalSize { progress.total.store(t, ordering: .relaxed) }
            do throws(TransferError) { sink = try FileSink(path: output, size: session.totalSize) } catch {
                // Tell the sender why before hanging up.
                let abort = AbortSignal(side: "receiver")
                for c in connections { abort.watch(c) }
                abort.abort(error)
                for c in connections { c.close() }
                throw error
            }
            let (totals, traffic, ran) = try run(session, connections, sink!, backend)
            if let ran { report.backend = ran }
            report.completed = true
            report.bytes = totals.rawBytes
            report.chunks = totals.chunks
            report.digest = totals.digest
            (report.wireBytes, report.keepalives) = traffic
        } catch {
            sink?.discard()
            report.error = error
            report.bytes = progress.bytes
            report.wireBytes = progress.wireBytes
        }
        listener.stop()
        report.elapsed = Monotonic.now - start
        return report
    }

    private func run(_ session: SessionInfo, _ connections: [Connection], _ sink: FileSink,
                     _ backend: IOBackendKind) throws(TransferError) -> (TransferTotals, (UInt64, UInt64), IOBackendKind?) {
        defer { for c in connections { c.close() } }
        let abort = AbortSignal(side: "receiver")
        let chunk = UInt64(session.chunkSize)
        let total = session.totalSize
        let addressable = session.mode == .addressable
        let chunkCount = total.map { $0 / chunk + ($0 % chunk == 0 ? 0 : 1) } ?? 0
        let options = self.options, progress = self.progress, warn = self.warn

        abort.onAbort { sink.wake() }
        let group = try ChannelSet.serve(session, connections: connections, options: options, abort: abort, backend: backend, warn: warn)
        defer { group.shutdown(); sink.wake() }
        let merged = Mutex(ChannelStats())
        let rings = RingBackends()
        do {
            try group.run { (i, ch) throws(TransferError) in
                rings.add(ch.ring)
                while true {
                    let before = ch.stats.wireBytes
                    let frame = try ch.receive()
                    let h = frame.header
                    switch h.type {
                    case .data where addressable:
                        guard let total else { throw TransferError(.protocolViolation, "data frame in a session of unknown size") }
                        let packed = h.flags.contains(.zeroPages)
                        let length = h.position < total ? min(chunk, total - h.position) : 0
                        guard h.position % chunk == 0, h.position < total, packed || UInt64(h.rawLength) == length else {
                            throw TransferError(.protocolViolation, "chunk at offset \(h.position) with \(h.rawLength) bytes does not fit a \(total)-byte transfer in \(chunk)-byte chunks")
                        }
                        // A chunk without its zero pages: its table is checked before anything is recorded or written.
                        var table: ExtentTable.View?
                        if packed {
                            do { table = try ExtentTable.parsePacked(frame.bytes, chunkLength: length) } catch {
                                throw TransferError(.protocolViolation, "chunk at offset \(h.position) on channel \(i): \(error)")
                            }
                        }
                        let index = h.position / chunk
                        guard sink.cover(index) else {
                            throw TransferError(.protocolViolation, "chunk at offset \(h.position) arrived twice")
                        }
                        try sink.reserveOnce()
                        if let table {
                            let spareSlot = frame.slot == ch.inSlot ? ch.outSlot : ch.inSlot
                            try sink.writePacked(table, index: index, at: h.position, length: Int(length), ring: ch.ring, slot: frame.slot,
                                                 spare: ch.pool.payload(spareSlot), spareSlot: spareSlot,
                                                 timeout: options.timeout, abort: abort)
                        } else if sink.seekable {
                            try sink.write(frame.bytes, at: h.position, ring: ch.ring, slot: frame.slot)
                        } else {
                            try sink.writeInOrder(frame.bytes, index: index, ring: ch.ring, slot: frame.slot,
                                                  timeout: options.timeout, abort: abort)
                        }
                        ch.stats.digest.add(index: index, length: Int(length), checksum: h.checksum)
                        ch.stats.chunks += 1
                        ch.stats.rawBytes += length
                        progress.add(bytes: length, wire: ch.stats.wireBytes - before)
                        continue
                    case .streamData where !addressable:
                        try sink.writeInOrder(frame.bytes, index: h.position, ring: ch.ring, slot: frame.slot,
                                              timeout: options.timeout, abort: abort)
                        ch.stats.digest.add(index: h.position, length: Int(h.rawLength), checksum: h.checksum)
                        ch.stats.chunks += 1
                        ch.stats.rawBytes += UInt64(h.rawLength)
                    case .channelEnd:
                        let end: ChannelEnd
                        do { end = try ChannelEnd.decode(frame.control) } catch {
                            throw TransferError(.protocolViolation, "malformed channel end on channel \(i): \(error)")
                        }
                        guard end.chunks == ch.stats.chunks, end.rawBytes == ch.stats.rawBytes else {
                            throw TransferError(.corruption, "channel \(i) ended with \(ch.stats.chunks) chunks / \(ch.stats.rawBytes) bytes received but the sender sent \(end.chunks) / \(end.rawBytes)")
                        }
                        let s = ch.stats
                        merged.withLock { $0.merge(s) }
                        return
                    default:
                        throw Channel.unexpected(frame, expecting: addressable ? "data" : "stream data", channel: i)
                    }
                    progress.add(bytes: UInt64(h.rawLength), wire: ch.stats.wireBytes - before)
                }
            }

            // Channel 0 then carries the totals; check them, sync, rename, and only then ack.
            let stats = merged.withLock { $0 }
            try group.run(only: 0) { (_, ch) throws(TransferError) in
                let frame = try ch.receive()
                guard frame.header.type == .endOfStream else { throw Channel.unexpected(frame, expecting: "end of stream", channel: 0) }
                let totals: TransferTotals
                do { totals = try TransferTotals.decode(frame.control) } catch {
                    throw TransferError(.protocolViolation, "malformed end of stream: \(error)")
                }
                guard totals.chunks == stats.chunks, totals.rawBytes == stats.rawBytes else {
                    throw TransferError(.corruption, "the sender's totals (\(totals.chunks) chunks, \(totals.rawBytes) bytes) differ from what arrived (\(stats.chunks) chunks, \(stats.rawBytes) bytes)")
                }
                if addressable, let total {
                    guard stats.rawBytes == total, sink.coveredCount == chunkCount else {
                        throw TransferError(.corruption, "incomplete transfer: \(stats.rawBytes) of \(total) bytes arrived")
                    }
                } else {
                    guard sink.writtenInOrder == stats.chunks else {
                        throw TransferError(.corruption, "stream incomplete: \(sink.writtenInOrder) of \(stats.chunks) chunks written")
                    }
                }
                guard totals.digest == stats.digest.value else {
                    throw TransferError(.corruption, "transfer digest mismatch: the sender's is \(TransferDigest.hex(totals.digest)), the received data's is \(TransferDigest.hex(stats.digest.value))")
                }
                try sink.commit(size: addressable ? total : nil)
                let ack = TransferTotals(chunks: stats.chunks, rawBytes: stats.rawBytes, wireBytes: stats.wireBytes, digest: stats.digest.value)
                try ch.sendControl(.ack, payload: ack.encoded())
            }
            // Every frame both ways, the ack included: what the sender counts (see
            // `ChannelStats.wireBytes`).
            return (TransferTotals(chunks: stats.chunks, rawBytes: stats.rawBytes, wireBytes: stats.wireBytes, digest: stats.digest.value),
                    group.traffic(), rings.single)
        } catch {
            abort.abort(error)
            throw abort.error ?? error
        }
    }
}

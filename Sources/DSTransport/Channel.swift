import Glibc
import Synchronization
import DSRing
import DSWire
import DSCodec
import DSSupport

/// Counters one channel keeps; merged at the end.
package struct ChannelStats: Sendable {
    package var chunks: UInt64 = 0
    package var rawBytes: UInt64 = 0
    /// Frame bytes on the channel, both ways, once the session is admitted: every data, control
    /// and keepalive frame this channel sent or received, header and payload. Not counted:
    /// admission (the preamble and the accept), TLS records' overhead, TCP/IP headers. Keepalives
    /// this end sent are not here but in `Connection.keepalivesSent` (the pacer sends them from
    /// its own thread); `Channel.wireBytes` adds them. With that rule both ends of a complete
    /// transfer count the same frames and report the same figure.
    package var wireBytes: UInt64 = 0
    /// Keepalive frames received (those sent are counted by the connection).
    package var keepalives: UInt64 = 0
    package var digest = TransferDigest()
    package init() {}
    package mutating func merge(_ o: ChannelStats) {
        chunks += o.chunks; rawBytes += o.rawBytes; wireBytes += o.wireBytes; keepalives += o.keepalives; digest.merge(o.digest)
    }
}

/// A frame received on a channel. Data payloads are decoded and verified; `bytes` points into
/// the channel's pool (`slot`) and is valid until the next `receive`.
package struct ReceivedFrame {
    package var header: FrameHeader
    /// The decoded payload of a data frame (empty for control frames).
    package var bytes: UnsafeRawBufferPointer
    /// The pool slot holding `bytes` (for fixed writes).
    package var slot: Int
    /// A control frame's payload.
    package var control: [UInt8]
}

/// One channel: one thread's ring, one connection, a two-slot pool and an LZ4 state.
///
/// Create and use it on one thread. Memory is fixed at creation: slot 0 takes reads (sender) or
/// received payloads (receiver), slot 1 takes compressed (sender) or decoded (receiver) bytes.
/// Nothing is allocated per chunk.
package final class Channel {
    /// A channel ring's submission queue: one frame or file operation at a time, except a pages
    /// frame's extent reads, which go up to this many to one `io_uring_enter` (`Ring.readBatch`).
    package static let ringEntries: UInt32 = 64
    package let index: Int
    /// The socket, its TLS stream, send turn and guard; the channel sends through it.
    package let connection: Connection
    package let ring: Ring
    package let pool: BufferPool
    package let chunkSize: Int
    package let timeout: Duration
    private let encoder: ChunkEncoder
    package var stats = ChannelStats()
    /// Slot holding raw input (sender) or received payload (receiver).
    package let inSlot: Int
    /// Slot holding compressed output (sender) or decoded output (receiver).
    package let outSlot: Int
    /// The largest chunk the peer may send (the session's chunk size).
    package var maxChunk: Int
    /// After a failed send, look for an error frame the peer left (off when another thread
    /// reads this socket, as the migration source's feedback reader does on channel 0).
    package var peekPeerErrors = true
    /// The connection's TLS stream (nil: plaintext, the ring's send/recv straight on the socket).
    package let secure: SecureStream?

    /// - Parameters:
    ///   - connection: a connected socket, after its TLS handshake if it has one; the channel
    ///     does not close it.
    ///   - ring: this thread's ring; the channel registers its pool with it.
    /// - Throws: `.localIO` when its buffers (two slots of about `chunkSize`, an LZ4 state)
    ///   cannot be allocated; never a trap.
    package init(index: Int, connection: Connection, ring: Ring, chunkSize: Int, compression: Bool, acceleration: Int,
                timeout: Duration, warn: (String) -> Void = { _ in }) throws(TransferError) {
        self.index = index
        self.connection = connection
        self.ring = ring
        self.chunkSize = chunkSize
        self.maxChunk = chunkSize
        self.timeout = timeout
        secure = connection.secure
        let capacity = WireLimits.payloadCapacity(chunkSize: chunkSize)
        do {
            pool = try BufferPool(slots: 2, payloadCapacity: capacity, headroom: FrameHeader.size)
            encoder = try ChunkEncoder(compression: compression, acceleration: acceleration)
        } catch {
            throw .noMemory(error, for: "the I/O buffers of channel \(index) (2 slots of \(capacity + FrameHeader.size) bytes and an LZ4 state)")
        }
        inSlot = pool.checkout()!   // a fresh two-slot pool
        outSlot = pool.checkout()!
        let registration = ring.register(pool)  // a ring that fell back registers nothing
        if let w = ring.setupWarning ?? registration { warn(w) }
    }

    /// Frame bytes on this channel, both ways (`ChannelStats.wireBytes`), with the keepalives
    /// the pacer sent on its connection.
    package var wireBytes: UInt64 { stats.wireBytes + connection.keepalivesSent * KeepalivePacer.frameSize }

    /// Keepalive frames on this channel, both ways.
    package var keepalives: UInt64 { stats.keepalives + connection.keepalivesSent }

    /// The payload area to read a chunk into before `sendChunk`.
    package var readBuffer: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: pool.payload(inSlot)[0..<chunkSize])
    }

    // MARK: Sending

    /// Whether chunks are compressed on this channel (`--compression lz4`).
    package var compresses: Bool { encoder.compressionEnabled }

    /// Encodes and sends the `length` bytes at the start of `readBuffer` as one data frame.
    /// Sends straight from the read slot when the chunk does not shrink.
    /// - Parameter chunkLength: the bytes of the source the frame stands for, when that is not
    ///   `length` (a chunk packed without its zero pages); they count in the statistics and the
    ///   transfer digest, which both ends then agree on.
    package func sendChunk(type: FrameType, stream: UInt16 = 0, position: UInt64, length: Int, chunkLength: Int? = nil,
                          digestIndex: UInt64, flags: FrameFlags = [], aux: UInt32 = 0) throws(TransferError) {
        let raw = UnsafeRawBufferPointer(rebasing: pool.payload(inSlot)[0..<length])
        let out = pool.payload(outSlot)
        let enc = encoder.encode(raw, into: out)
        let slot = enc.compressed ? outSlot : inSlot
        var f = flags
        if enc.compressed { f.insert(.lz4) }
        let header = FrameHeader(type: type, flags: f, stream: stream, rawLength: UInt32(length),
                                 wireLength: UInt32(enc.wireLength), aux: aux, position: position, checksum: enc.checksum)
        header.encode(into: pool.header(slot))
        let frame = UnsafeRawBufferPointer(rebasing: pool.bytes(slot)[0..<(FrameHeader.size + enc.wireLength)])
        connection.sendTurn.beginChannelSend()
        defer { connection.sendTurn.endChannelSend() }
        try sendBytes(frame, doing: "sending data")
        stats.chunks += 1
        stats.rawBytes += UInt64(chunkLength ?? length)
        stats.wireBytes += UInt64(frame.count)
        stats.digest.add(index: digestIndex, length: chunkLength ?? length, checksum: enc.checksum)
    }

    /// Sends a control frame (header, then payload, one send in flight at a time).
    package func sendControl(_ type: FrameType, stream: UInt16 = 0, aux: UInt32 = 0, position: UInt64 = 0,
                            payload: [UInt8] = []) throws(TransferError) {
        let frame = controlFrame(type, stream: stream, aux: aux, position: position, payload: payload)
        connection.sendTurn.beginChannelSend()
        defer { connection.sendTurn.endChannelSend() }
        try sendBytes(frame, doing: "sending \(type)")
        stats.wireBytes += UInt64(FrameHeader.size + payload.count)
    }

    /// Sends all of `bytes` (one whole frame, marked in flight) through the connection's funnel
    /// and this thread's ring, through TLS when the session is encrypted.
    package func sendBytes(_ bytes: UnsafeRawBufferPointer, doing: String) throws(TransferError) {
        do { try connection.send(bytes, timeout: timeout, ring: ring) } catch {
            if case .socket(let e) = error { throw peerFailure(e, doing: doing) }
            if let secure { throw error.transferError(doing, channel: index, stream: secure) }
            throw error.transferError(doing, channel: index)
        }
    }

    /// `sendBytes` for an array.
    package func sendBytes(_ bytes: [UInt8], doing: String) throws(TransferError) {
        var failure: TransferError?
        bytes.withUnsafeBytes { b in
            do throws(TransferError) { try sendBytes(b, doing: doing) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Receives exactly `dst.count` bytes (fewer: the peer closed), through TLS when encrypted.
    private func receiveBytes(_ dst: UnsafeMutableRawBufferPointer, timeout: Duration) throws(TransferError) -> Int {
        if let secure {
            do { return try secure.recvExactly(into: dst, ring: ring, timeout: timeout) } catch {
                throw error.transferError("receiving", channel: index, stream: secure)
            }
        }
        do { return try ring.recvExactly(fd: connection.fd, into: dst, timeout: timeout) } catch {
            throw TransferError.network(error, "receiving", channel: index)
        }
    }

    /// After a send failed, the peer may have said why before closing: read an `error` frame if
    /// one is waiting, and report its message instead of the bare socket error.
    func peerFailure(_ e: Errno, doing: String) -> TransferError {
        // The peer's message already names its side ("the receiver failed: ...").
        if e != .timedOut, peekPeerErrors, let message = Channel.pendingErrorMessage(connection) {
            return TransferError(.remote, message)
        }
        return TransferError.network(e, doing, channel: index)
    }

    /// Reads (non-blocking, bounded) an error or reject frame the peer left on the socket.
    static func pendingErrorMessage(_ connection: Connection) -> String? {
        var buf = [UInt8](repeating: 0, count: FrameHeader.size + ErrorMessage.maxEncodedSize)
        let n = buf.withUnsafeMutableBytes { connection.readAvailable(into: $0) }
        guard n >= FrameHeader.size else { return nil }
        guard let h = try? buf.withUnsafeBytes({ try FrameHeader.decode($0) }),
              h.type == .error || h.type == .reject, FrameHeader.size + Int(h.wireLength) <= n,
              let m = try? ErrorMessage.decode(Array(buf[FrameHeader.size..<(FrameHeader.size + Int(h.wireLength))]))
        else { return nil }
        return m.message
    }

    // MARK: Receiving

    /// Receives the next frame: validates the header before anything else, bounds every
    /// length, then decodes and verifies data payloads. `keepalive` frames are skipped here,
    /// between any two frames: each restarts the stall timeout.
    package func receive(timeout: Duration? = nil) throws(TransferError) -> ReceivedFrame {
        try receive(timeout: timeout, deadline: nil, phase: "")
    }

    /// Receives the next frame before `deadline` (a `Monotonic` instant), however many
    /// keepalives come first: the overall deadline of a phase (`phase` names it in the error),
    /// where `receive(timeout:)` restarts its stall timeout with every keepalive.
    package func receive(before deadline: Duration, phase: String) throws(TransferError) -> ReceivedFrame {
        try receive(timeout: nil, deadline: deadline, phase: phase)
    }

    private func receive(timeout: Duration?, deadline: Duration?, phase: String) throws(TransferError) -> ReceivedFrame {
        let hbuf = pool.header(inSlot)
        var header: FrameHeader
        repeat {
            var wait = timeout ?? self.timeout
            if let deadline {
                let left = deadline - Monotonic.now
                guard left > .zero else {
                    throw TransferError(.timeout, "\(phase) on channel \(index): the phase's deadline passed (the peer sent only keepalives, or nothing)")
                }
                wait = min(wait, left)
            }
            let got: Int
            do { got = try receiveBytes(hbuf, timeout: wait) } catch where error.code == .timeout && deadline != nil {
                throw TransferError(.timeout, "\(phase) on channel \(index): nothing arrived within the phase's deadline")
            }
            guard got == FrameHeader.size else {
                throw TransferError(.peerClosed, got == 0
                    ? "the peer closed channel \(index) before the transfer completed"
                    : "the stream on channel \(index) was truncated inside a frame header")
            }
            do {
                header = try FrameHeader.decode(UnsafeRawBufferPointer(hbuf))
                try header.checkLengths(maxChunk: maxChunk)
            } catch {
                throw TransferError(.protocolViolation, "invalid frame on channel \(index): \(error)")
            }
            stats.wireBytes += UInt64(FrameHeader.size) + UInt64(header.wireLength)
            if header.type == .keepalive {
                guard header.wireLength == 0 else {
                    throw TransferError(.protocolViolation, "invalid frame on channel \(index): a keepalive with a \(header.wireLength)-byte payload")
                }
                stats.keepalives += 1
            }
        } while header.type == .keepalive
        let wire = Int(header.wireLength)
        if header.type.isData {
            let dst = UnsafeMutableRawBufferPointer(rebasing: pool.payload(inSlot)[0..<wire])
            try recvPayload(dst)
            let raw = Int(header.rawLength)
            do {
                if header.flags.contains(.lz4) {
                    let out = UnsafeMutableRawBufferPointer(rebasing: pool.payload(outSlot)[0..<raw])
                    try ChunkDecoder.decompress(UnsafeRawBufferPointer(dst), rawLength: raw, checksum: header.checksum, into: out)
                    return ReceivedFrame(header: header, bytes: UnsafeRawBufferPointer(out), slot: outSlot, control: [])
                }
                try ChunkDecoder.verify(UnsafeRawBufferPointer(dst), checksum: header.checksum)
            } catch {
                throw TransferError(.corruption, "corrupted chunk at \(header.type == .data ? "offset" : "sequence") \(header.position) on channel \(index): \(error)")
            }
            return ReceivedFrame(header: header, bytes: UnsafeRawBufferPointer(dst), slot: inSlot, control: [])
        }
        var payload = [UInt8](repeating: 0, count: wire)
        if wire > 0 {
            do { try payload.withUnsafeMutableBytes { b in try recvPayload(b) } } catch let e as TransferError { throw e } catch {
                throw TransferError(.peerClosed, "receiving on channel \(index) failed: \(error)")
            }
            let sum = payload.withUnsafeBytes { xxh3($0) }
            guard sum == header.checksum else {
                throw TransferError(.corruption, "corrupted \(header.type) frame on channel \(index) (checksum mismatch)")
            }
        }
        return ReceivedFrame(header: header, bytes: UnsafeRawBufferPointer(start: nil, count: 0), slot: inSlot, control: payload)
    }

    private func recvPayload(_ dst: UnsafeMutableRawBufferPointer) throws(TransferError) {
        let n = try receiveBytes(dst, timeout: timeout)
        guard n == dst.count else {
            throw TransferError(.peerClosed, "the stream on channel \(index) was truncated: the peer closed it inside a frame (\(n) of \(dst.count) payload bytes)")
        }
    }

    /// Fails with the message of an `error` frame, or a protocol error for an unexpected type.
    package static func unexpected(_ frame: ReceivedFrame, expecting: String, channel: Int) -> TransferError {
        if frame.header.type == .error || frame.header.type == .reject,
           let m = try? ErrorMessage.decode(frame.control) {
            return TransferError(.remote, m.message)
        }
        return TransferError(.protocolViolation, "unexpected \(frame.header.type) frame on channel \(channel), expected \(expecting)")
    }
}

extension WorkerGroup where Context == Channel {
    /// Frame bytes over every channel, both ways, keepalives included (`Channel.wireBytes`): a
    /// session's `wire_bytes`; and the keepalive frames among them. Runs on the channels' own
    /// threads (each owns its counters); zeros when the group no longer runs.
    package func traffic() -> (wireBytes: UInt64, keepalives: UInt64) {
        let total = Mutex<(UInt64, UInt64)>((0, 0))
        try? run { (_, ch) throws(TransferError) in
            let (w, k) = (ch.wireBytes, ch.keepalives)
            total.withLock { $0.0 += w; $0.1 += k }
        }
        return total.withLock { $0 }
    }

    /// `traffic().wireBytes`.
    package func wireBytes() -> UInt64 { traffic().wireBytes }
}

/// A whole control frame, header and payload: the one place control frames are built.
package func controlFrame(_ type: FrameType, stream: UInt16 = 0, aux: UInt32 = 0, position: UInt64 = 0,
                         payload: [UInt8] = []) -> [UInt8] {
    precondition(payload.count <= WireLimits.maxControlPayload)
    let header = FrameHeader(type: type, stream: stream, rawLength: UInt32(payload.count), wireLength: UInt32(payload.count),
                             aux: aux, position: position, checksum: payload.withUnsafeBytes { xxh3($0) })
    var bytes = [UInt8](repeating: 0, count: FrameHeader.size + payload.count)
    bytes.withUnsafeMutableBytes { b in
        header.encode(into: b)
        b.baseAddress!.advanced(by: FrameHeader.size).copyMemory(from: payload, byteCount: payload.count)
    }
    return bytes
}

extension ErrorMessage {
    /// This message as a whole `error` (or `reject`) frame.
    package func frame(type: FrameType = .error) -> [UInt8] { controlFrame(type, payload: encoded()) }

    /// An `accept` frame (empty payload).
    package static let acceptFrame: [UInt8] = controlFrame(.accept)
}

extension AbortSignal {
    /// A session's abort signal whose farewell tells the peer "the `side` failed: why".
    package convenience init(side: String) {
        self.init(farewell: { ErrorMessage(code: 1, message: "the \(side) failed: \($0.message)").frame() })
    }
}

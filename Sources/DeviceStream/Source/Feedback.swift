import DSSupport
import DSWire
import DSRing
import DSTransport

/// Destination → source messages, read on channel 0 by their own thread and ring.
///
/// Every frame goes through the source's `Handover` machine first: a `resumed` before `commit`,
/// or a `loaded` before the state was sent, is a protocol violation that aborts the session (the
/// source devices are restarted as long as nothing was committed). Load-rate samples are
/// consumed once; round-trip samples come from `pong`s echoing the source's clock.
final class Feedback: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`; `thread` is written before the reader
    // starts and read by `join` after it.
    private let lock = ConditionLock()
    private var handover = Handover(side: .source)
    private var acks: Set<Int> = []
    /// Fresh (round, bytes/s) load-rate samples since the last `takeLoadRates`.
    private var loadRates: [(round: UInt32, rate: Double)] = []
    private var rtts: [Duration] = []
    /// The highest round every destination channel has loaded (its `loadStats`).
    private var loadedRound: UInt32 = 0
    /// The highest round the source has sent (a report for a later one is a lie).
    private var sentRound: UInt32 = 0
    private var aborted = false
    private var loaded: Loaded?
    private var resumed: Resumed?
    private var digests: DeviceDigests?
    private var failure: TransferError?
    private var thread: OSThread?
    /// Frame bytes read here (header and payload): this thread's channel is not one of the
    /// session's `ChannelSet`, and `wire_bytes` counts every frame both ways at both ends.
    private var received: UInt64 = 0
    var receivedBytes: UInt64 { lock.withLock { received } }

    /// Starts the reader thread, `ds-feedback`.
    /// - Throws: `.localIO` when the thread cannot be started.
    func start(connection: Connection, options: TransferOptions, backend: IOBackendKind, abort: AbortSignal) throws(TransferError) {
        let t: OSThread
        do {
            t = try OSThread(name: "ds-feedback") { [self] in
                let ring: Ring
                do { ring = try Ring(entries: 4, backend: backend) } catch {
                    fail(TransferError(.localIO, "cannot create an I/O ring for destination feedback: \(error)"), abort: abort)
                    return
                }
                do throws(TransferError) {
                    let ch = try Channel(index: 0, connection: connection, ring: ring, chunkSize: WireLimits.minChunkSize,
                                         compression: false, acceleration: 1, timeout: max(options.timeout, .seconds(600)))
                    while try handle(try receive(ch, abort: abort)) {}
                } catch {
                    let e = error.code == .peerClosed
                        ? TransferError(.peerClosed, "the destination went away (\(error.message))", hint: error.hint, cause: error.cause) : error
                    fail(e, abort: abort)
                }
            }
        } catch {
            throw .threadStart(error, "ds-feedback", doing: "reading the destination's replies")
        }
        thread = t
    }

    private func fail(_ e: TransferError, abort: AbortSignal) {
        lock.withLock { if failure == nil { failure = e }; lock.broadcast() }
        abort.abort(e)
    }

    /// The next frame; quiet is normal during a long bulk round (the data channels detect stalls).
    private func receive(_ ch: Channel, abort: AbortSignal) throws(TransferError) -> ReceivedFrame {
        while true {
            do throws(TransferError) {
                let f = try ch.receive()
                let total = ch.stats.wireBytes
                lock.withLock { received = total }
                return f
            } catch where error.code == .timeout && !abort.isAborted {
                continue
            }
        }
    }

    /// Handles one frame; false after the last one (`ack`).
    private func handle(_ f: ReceivedFrame) throws(TransferError) -> Bool {
        let now = Monotonic.now
        // The destination's own failure (an `error` frame) is its reason, not a handover step.
        if f.header.type == .error { throw Channel.unexpected(f, expecting: "destination feedback", channel: 0) }
        let reaction = try lock.withLock { () -> Result<Handover.Reaction, TransferError> in
            do throws(TransferError) { return .success(try handover.received(f.header.type)) } catch { return .failure(error) }
        }.get()
        switch f.header.type {
        case .switchoverAck: lock.withLock { acks.insert(Int(f.header.stream)); lock.broadcast() }
        case .loadStats: try recordLoadStats(try decode { () throws(WireError) in try LoadStats.decode(f.control) }, round: f.header.aux)
        case .pong:
            let sent = Duration.nanoseconds(Int64(clamping: f.header.position))
            if sent > .zero && sent <= now { lock.withLock { rtts.append(now - sent); if rtts.count > 8 { rtts.removeFirst() } } }
        case .loaded:
            let t = try decode { () throws(WireError) in try Loaded.decode(f.control) }
            lock.withLock { loaded = t; lock.broadcast() }
        case .resumed:
            let t = try decode { () throws(WireError) in try Resumed.decode(f.control) }
            lock.withLock { resumed = t; lock.broadcast() }
        case .ack:
            let d = try decode { () throws(WireError) in try DeviceDigests.decode(f.control) }
            lock.withLock { digests = d; lock.broadcast() }
            return false
        default:
            throw Channel.unexpected(f, expecting: "destination feedback (\(reaction))", channel: 0)
        }
        return true
    }

    private func recordLoadStats(_ s: LoadStats, round: UInt32) throws(TransferError) {
        let bogus = lock.withLock { round > sentRound }
        if bogus { throw TransferError(.protocolViolation, "the destination reported round \(round) loaded before it was sent") }
        lock.withLock {
            loadedRound = max(loadedRound, round)
            if let rate = s.rateSample { loadRates.append((round, rate)); if loadRates.count > 64 { loadRates.removeFirst() } }
            lock.broadcast()
        }
    }

    private func decode<T>(_ body: () throws(WireError) -> T) throws(TransferError) -> T {
        do { return try body() } catch { throw TransferError(.protocolViolation, "malformed destination message: \(error)") }
    }

    /// Every channel end is sent: `loaded` may come.
    func stateSent() { lock.withLock { handover.stateSent(); lock.broadcast() } }

    /// Whether `commit` may go out now (`loaded` arrived and nothing came after it).
    var mayCommit: Bool { lock.withLock { handover.maySend(.commit) } }

    /// `commit` is about to go out: `resumed` may come.
    func commitSent() { lock.withLock { handover.sent(.commit); lock.broadcast() } }

    /// The summary (`endOfStream`) is about to go out: the handover is finished.
    func summarySent() { lock.withLock { handover.sent(.endOfStream) } }

    /// Round `r` (its mark included) is on its way: the destination may report it.
    func sent(round r: UInt32) { lock.withLock { sentRound = max(sentRound, r) } }

    /// Ends every wait at once (the session aborted elsewhere).
    func wake() { lock.withLock { aborted = true; lock.broadcast() } }

    func takeAcks() -> Set<Int> { lock.withLock { acks } }

    /// The load-rate samples that arrived since the last call (each is used once).
    func takeLoadRates() -> [(round: UInt32, rate: Double)] { lock.withLock { defer { loadRates = [] }; return loadRates } }

    /// The smallest of the recent round trips: queueing behind data only ever adds to a sample.
    var roundTrip: Duration? { lock.withLock { rtts.min() } }

    private func wait<T>(_ what: String, timeout: Duration, _ value: () -> T?) throws(TransferError) -> T {
        var out: T?, err: TransferError?
        lock.withLock {
            _ = lock.wait(until: { value() != nil || failure != nil || aborted }, timeout: timeout)
            out = value(); err = failure
        }
        if let out { return out }
        if err == nil && aborted { throw TransferError(.aborted, "the migration was aborted") }
        throw err ?? TransferError(.timeout, "the destination did not \(what) within \(timeout)")
    }

    /// Waits until the destination has loaded `round` on every channel.
    func waitRoundLoaded(_ round: UInt32, timeout: Duration) throws(TransferError) {
        _ = try wait("report round \(round) loaded", timeout: timeout) { loadedRound >= round ? true : nil }
    }

    func waitLoaded(timeout: Duration) throws(TransferError) -> Loaded {
        try wait("report its devices loaded", timeout: timeout) { loaded }
    }

    func waitResumed(timeout: Duration) throws(TransferError) -> Resumed {
        try wait("report its devices running", timeout: timeout) { resumed }
    }

    func waitDigests(timeout: Duration) throws(TransferError) -> DeviceDigests {
        try wait("report its digests", timeout: timeout) { digests }
    }

    func join() { thread?.join(); thread = nil }
}

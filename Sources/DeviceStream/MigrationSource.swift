import Glibc
import Synchronization
import DSWire
import DSRing
import DSTransport
import DSDevices
import DSScheduler
import DSSupport

/// Progress events a source emits while it migrates.
public enum MigrationEvent: Sendable {
    case setupDone(Duration)
    case iteration(IterationReport)
    case switchover(predicted: Duration?, reason: String)
}

/// The source end of a live migration.
///
/// It runs the devices' save hooks over the data path: setup (device headers; devices enter
/// PRE_COPY), pre-copy rounds of dirty data spread over N channels, the scheduler's decision
/// after each round, then switchover (devices to STOP_COPY, the rest of the state, config,
/// end of state), the destination's `loaded`, the source's `commit` and the destination's
/// `resumed`. On any failure before `commit` the source devices go back to RUNNING with their
/// state intact; from `commit` on they stay stopped (the destination may run them).
public final class MigrationSource {
    public let devices: [any MigratableDevice]
    public let configuration: MigrationConfiguration
    /// Live progress (device bytes sent so far), readable from any thread.
    public let progress = TransferProgress()
    /// Called as the handover passes each step (logging; tests stop the process there).
    public var phaseHook: (@Sendable (HandoverPhase) -> Void)?
    private let warn: @Sendable (String) -> Void

    public init(devices: [any MigratableDevice], configuration: MigrationConfiguration,
                warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) {
        self.devices = devices
        self.configuration = configuration
        self.warn = warn
    }

    /// Migrates every device to the destination listening at `endpoint`.
    public func migrate(to endpoint: Endpoint, onEvent: @escaping (MigrationEvent) -> Void = { _ in }) -> MigrationReport {
        let start = Monotonic.now
        var report = MigrationReport()
        report.downtimeLimit = configuration.downtimeLimit
        report.connections = configuration.transfer.connections
        report.compression = configuration.transfer.compression
        report.devices = devices.enumerated().map { DeviceReport(id: $0.offset, spec: $0.element.spec, bytes: 0) }
        let savers = devices.enumerated().map { DeviceSaver(id: $0.offset, device: $0.element) }
        let abort = AbortSignal(side: "source")
        var run = SourceRun(savers: savers, configuration: configuration, abort: abort, report: report, progress: progress)
        run.phaseHook = phaseHook
        do {
            try run.execute(endpoint: endpoint, start: start, warn: warn, onEvent: onEvent)
            report = run.report
            report.completed = true
        } catch {
            abort.abort(error)
            run.shutdown()
            report = run.report
            if run.committed {
                // `commit` may have reached the destination, which then runs the devices:
                // restarting them here could run the same device twice. The source stays stopped.
                let states = savers.map { "\($0.device.spec) stays \($0.device.state) on the source" }
                let context = report.downtime != nil
                    ? "after the handover (the devices are RUNNING on the destination)"
                    : "after the source committed the handover, before the destination confirmed its devices RUNNING (check the destination before restarting anything)"
                report.error = TransferError(error.code, "\(context): \(error.message); \(states.joined(separator: ", "))")
                run.shutdown()
                report.totalTime = Monotonic.now - start
                return report
            }
            var states: [String] = []
            for s in savers {
                do throws(DeviceError) { try s.cleanup(success: false) } catch {
                    states.append("\(s.device.spec) could not be restarted: \(error)")
                    continue
                }
                states.append("\(s.device.spec) is \(s.device.state) again on the source")
            }
            report.error = TransferError(error.code, "\(error.message); \(states.joined(separator: ", "))")
        }
        run.shutdown()
        report.totalTime = Monotonic.now - start
        return report
    }
}

/// Where the handover stands, as the source sees it: what the destination may send next.
enum HandoverStage: Int, Comparable, Sendable {
    /// Pre-copy and stop-copy: acks, load stats, pongs.
    case transferring
    /// Every channel end is sent: `loaded` may come.
    case stateSent
    /// `commit` is sent: `resumed` may come.
    case committed
    /// `resumed` arrived: the digests (`ack`) may come.
    case resumed
    static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// Destination → source messages, read on channel 0 by their own thread and ring.
///
/// Each handover message is accepted only at its stage (a `resumed` before `commit`, or a
/// `loaded` before the state was sent, is a protocol violation that aborts the session, with
/// the source devices restarted as long as nothing was committed). Load-rate samples are
/// consumed once; round-trip samples come from `pong`s echoing the source's clock.
final class Feedback: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`.
    private let lock = ConditionLock()
    private var acks: Set<Int> = []
    /// Fresh (round, bytes/s) load-rate samples since the last `takeLoadRates`.
    private var loadRates: [(round: UInt32, rate: Double)] = []
    private var rtts: [Duration] = []
    /// The highest round every destination channel has loaded (its `loadStats`).
    private var loadedRound: UInt32 = 0
    /// The highest round the source has sent (a report for a later one is a lie).
    private var sentRound: UInt32 = 0
    private var aborted = false
    private var stage = HandoverStage.transferring
    private var loaded: Timings?
    private var resumed: Timings?
    private var digests: DigestList?
    private var failure: TransferError?
    private var thread: OSThread?

    func start(connection: Connection, options: TransferOptions, backend: IOBackendKind, abort: AbortSignal) {
        thread = OSThread { [self] in
            let ring: Ring
            do { ring = try Ring(entries: 4, backend: backend) } catch {
                let e = TransferError(.localIO, "cannot create an I/O ring for destination feedback: \(error)")
                lock.withLock { failure = e; lock.broadcast() }
                abort.abort(e)
                return
            }
            let ch = Channel(index: 0, connection: connection, ring: ring, chunkSize: WireLimits.minChunkSize, compression: false,
                             acceleration: 1, timeout: max(options.timeout, .seconds(600)))
            do throws(TransferError) {
                while true {
                    let f: ReceivedFrame
                    do throws(TransferError) { f = try ch.receive() } catch where error.code == .timeout && !abort.isAborted {
                        // Quiet is normal during a long bulk round; the data channels detect stalls.
                        continue
                    }
                    let now = Monotonic.now
                    let stage = lock.withLock { self.stage }
                    func expect(_ s: HandoverStage) throws(TransferError) {
                        guard stage == s else {
                            throw TransferError(.protocolViolation, "the destination sent \(f.header.type) out of order (the source is at stage \(stage), not \(s)); the migration is refused")
                        }
                    }
                    switch f.header.type {
                    case .switchoverAck: lock.withLock { acks.insert(Int(f.header.stream)); lock.broadcast() }
                    case .loadStats:
                        let t = try decode { () throws(WireError) in try Timings.decode(f.control) }
                        let bogus = lock.withLock { f.header.aux > sentRound }
                        if bogus {
                            throw TransferError(.protocolViolation, "the destination reported round \(f.header.aux) loaded before it was sent")
                        }
                        lock.withLock {
                            loadedRound = max(loadedRound, f.header.aux)
                            if t.b.isFinite && t.b > 0 { loadRates.append((f.header.aux, t.b)); if loadRates.count > 64 { loadRates.removeFirst() } }
                            lock.broadcast()
                        }
                    case .pong:
                        let sent = Duration.nanoseconds(Int64(clamping: f.header.position))
                        if sent > .zero && sent <= now { lock.withLock { rtts.append(now - sent); if rtts.count > 8 { rtts.removeFirst() } } }
                    case .loaded:
                        try expect(.stateSent)
                        let t = try decode { () throws(WireError) in try Timings.decode(f.control) }
                        lock.withLock { loaded = t; lock.broadcast() }
                    case .resumed:
                        try expect(.committed)
                        let t = try decode { () throws(WireError) in try Timings.decode(f.control) }
                        lock.withLock { resumed = t; self.stage = .resumed; lock.broadcast() }
                    case .ack:
                        try expect(.resumed)
                        let d = try decode { () throws(WireError) in try DigestList.decode(f.control) }
                        lock.withLock { digests = d; lock.broadcast() }
                        return
                    default:
                        throw Channel.unexpected(f, expecting: "destination feedback", channel: 0)
                    }
                }
            } catch {
                let e = error.code == .peerClosed
                    ? TransferError(.peerClosed, "the destination went away (\(error.message))") : error
                lock.withLock { if failure == nil { failure = e }; lock.broadcast() }
                abort.abort(e)
            }
        }
    }

    private func decode<T>(_ body: () throws(WireError) -> T) throws(TransferError) -> T {
        do { return try body() } catch { throw TransferError(.protocolViolation, "malformed destination message: \(error)") }
    }

    func advance(to s: HandoverStage) { lock.withLock { stage = s; lock.broadcast() } }

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

    func waitLoaded(timeout: Duration) throws(TransferError) -> Timings {
        try wait("report its devices loaded", timeout: timeout) { loaded }
    }

    func waitResumed(timeout: Duration) throws(TransferError) -> Timings {
        try wait("report its devices running", timeout: timeout) { resumed }
    }

    func waitDigests(timeout: Duration) throws(TransferError) -> DigestList {
        try wait("report its digests", timeout: timeout) { digests }
    }

    func join() { thread?.join(); thread = nil }
}

/// Paces pre-copy to `--max-bandwidth` across channels (a shared token schedule).
final class Pacer: Sendable {
    let rate: Double
    let start: Duration
    let sent = Atomic<UInt64>(0)
    init(rate: UInt64) { self.rate = Double(rate); start = Monotonic.now }
    func account(_ bytes: Int) {
        let total = sent.add(UInt64(bytes), ordering: .relaxed).newValue
        let due = start + .nanoseconds(Int64(Double(total) / rate * 1e9))
        let now = Monotonic.now
        if due > now { sleep(for: due - now) }
    }
}

/// Per-device, per-channel counts of chunks and bytes sent.
final class SentCounters: Sendable {
    let chunks: Mutex<[[UInt64]]>
    let bytes: Mutex<[UInt64]>
    init(devices: Int, channels: Int) {
        chunks = Mutex([[UInt64]](repeating: [UInt64](repeating: 0, count: channels), count: devices))
        bytes = Mutex([UInt64](repeating: 0, count: devices))
    }
    func add(device: Int, channel: Int, bytes n: Int) {
        chunks.withLock { $0[device][channel] += 1 }
        bytes.withLock { $0[device] += UInt64(n) }
    }
    func totals(device: Int) -> DeviceTotals {
        DeviceTotals(chunksPerChannel: chunks.withLock { $0[device] }, bytes: bytes.withLock { $0[device] }, digest: nil)
    }
}

/// The state of one source run (kept apart so a failure can still read what happened).
struct SourceRun {
    let savers: [DeviceSaver]
    let configuration: MigrationConfiguration
    let abort: AbortSignal
    var report: MigrationReport
    var group: WorkerGroup<Channel>?
    var sockets: [Connection] = []
    let feedback = Feedback()
    let progress: TransferProgress
    /// Set when `commit` is about to go out: from then on a failure must not restart the
    /// source devices (the destination may be running them).
    var committed = false
    /// Called at each handover step (tests stop a process there).
    var phaseHook: (@Sendable (HandoverPhase) -> Void)?
    /// The shortest a pre-copy round lasts (tiny rounds are paced to it).
    static let minimumRound = Duration.milliseconds(20)

    init(savers: [DeviceSaver], configuration: MigrationConfiguration, abort: AbortSignal, report: MigrationReport,
         progress: TransferProgress) {
        self.progress = progress
        self.savers = savers
        self.configuration = configuration
        self.abort = abort
        self.report = report
    }

    mutating func shutdown() {
        group?.shutdown()
        group = nil
        abort.shutdownAll()
        feedback.join()
        for c in sockets { c.close() }
        sockets = []
    }

    private func device(_ error: DeviceError) -> TransferError { TransferError(.device, error.message) }

    /// One round: every channel claims ranges, then drains the stream devices.
    func sendRound(_ items: [SaveItem], streams: [DeviceSaver], flags: FrameFlags, iteration: Int, pacer: Pacer?,
                   counters: SentCounters) throws(TransferError) -> (bytes: UInt64, wire: UInt64) {
        guard let group else { return (0, 0) }
        let cursor = Atomic<Int>(0)
        let totals = Mutex<(UInt64, UInt64)>((0, 0))
        let fds = try savers.map { (s) throws(TransferError) -> Int32 in
            // Only devices in a saving state have data this round (a device without pre-copy
            // waits in RUNNING until stop-copy).
            guard let a = s.device as? any AddressableDevice, VFIOStateMachine.isSaving(s.device.state) else { return -1 }
            do throws(DeviceError) { return try a.dataFD(for: .save) } catch { throw device(error) }
        }
        let savers = self.savers
        let progress = self.progress
        try group.run { (i, ch) throws(TransferError) in
            var bytes: UInt64 = 0
            let wire0 = ch.stats.wireBytes
            while true {
                let k = cursor.add(1, ordering: .relaxed).oldValue
                guard k < items.count else { break }
                guard case .range(let d, let offset, let length) = items[k] else { continue }
                let buf = UnsafeMutableRawBufferPointer(rebasing: ch.readBuffer[0..<length])
                let n: Int
                do { n = try ch.ring.readFully(fd: fds[d], into: buf, offset: offset, slot: ch.inSlot) } catch {
                    throw TransferError(.device, "reading device \(d) (\(savers[d].device.spec)) at \(offset) failed: \(error)")
                }
                guard n == length else { throw TransferError(.device, "device \(d) returned \(n) of \(length) bytes at \(offset)") }
                pacer?.account(length)
                try ch.sendChunk(type: .data, stream: UInt16(d), position: offset, length: length, digestIndex: 0,
                                 flags: flags, aux: UInt32(iteration))
                counters.add(device: d, channel: i, bytes: length)
                progress.add(bytes: UInt64(length), wire: 0)
                bytes += UInt64(length)
            }
            for s in streams {
                while true {
                    let piece: (seq: UInt64, count: Int)?
                    do { piece = try s.readStream(into: ch.readBuffer) } catch {
                        throw TransferError(.device, "reading device \(s.id) (\(s.device.spec)) failed: \(error)")
                    }
                    guard let piece else { break }
                    pacer?.account(piece.count)
                    try ch.sendChunk(type: .streamData, stream: UInt16(s.id), position: piece.seq, length: piece.count,
                                     digestIndex: 0, flags: flags, aux: UInt32(iteration))
                    counters.add(device: s.id, channel: i, bytes: piece.count)
                    progress.add(bytes: UInt64(piece.count), wire: 0)
                    bytes += UInt64(piece.count)
                }
            }
            // Every channel marks the round's end: a keepalive for channels that had no data.
            try ch.sendControl(.iterationMark, aux: UInt32(iteration))
            let w = ch.stats.wireBytes - wire0
            totals.withLock { $0.0 += bytes; $0.1 += w }
        }
        return totals.withLock { $0 }
    }

    mutating func execute(endpoint: Endpoint, start: Duration, warn: @escaping @Sendable (String) -> Void,
                          onEvent: (MigrationEvent) -> Void) throws(TransferError) {
        let options = configuration.transfer
        try options.validate()
        guard !savers.isEmpty, savers.count <= WireLimits.maxDevices else {
            throw TransferError(.usage, "a migration carries 1...\(WireLimits.maxDevices) devices, got \(savers.count)")
        }
        let backend = options.backend ?? IOBackend.preferred
        let (g, s) = try ChannelSet.connect(to: endpoint, options: options, mode: .migration, totalSize: nil,
                                            abort: abort, backend: backend, warn: warn)
        group = g
        sockets = s
        let n = options.connections
        let counters = SentCounters(devices: savers.count, channels: n)
        let savers = self.savers

        // save_setup: devices enter PRE_COPY; headers go on channel 0; the destination answers
        // once its devices are set up (RESUMING), with how long that took. Only then is the
        // round trip measured, by pings the destination answers at once: the setup time (a
        // destination reserving gigabytes) is reported on its own, never mistaken for latency.
        let t0 = Monotonic.now
        for s in savers { do throws(DeviceError) { try s.saveSetup() } catch { throw device(error) } }
        let setupTransition = Monotonic.now - t0
        let setupReply = Mutex<(timings: Timings?, rtt: Duration?)>((nil, nil))
        try g.run(only: 0) { (_, ch) throws(TransferError) in
            for s in savers {
                try ch.sendControl(.deviceSection, stream: UInt16(s.id), aux: UInt32(savers.count), payload: s.header.encoded())
            }
            let reply = try ch.receive()
            guard reply.header.type == .accept else { throw Channel.unexpected(reply, expecting: "setup accept", channel: 0) }
            let t = reply.control.isEmpty ? nil : try? Timings.decode(reply.control)
            var best: Duration?
            for _ in 0..<3 {
                let sent = Monotonic.nanoseconds
                try ch.sendControl(.ping, position: sent)
                let pong = try ch.receive()
                guard pong.header.type == .pong, pong.header.position == sent else {
                    throw Channel.unexpected(pong, expecting: "pong", channel: 0)
                }
                let rtt = Duration.nanoseconds(Int64(clamping: Monotonic.nanoseconds &- sent))
                best = min(best ?? rtt, rtt)
            }
            setupReply.withLock { $0 = (t, best) }
        }
        let (destSetup, setupRTT) = setupReply.withLock { $0 }
        let rtt0 = setupRTT ?? .milliseconds(1)
        report.setupTime = Monotonic.now - start
        if let d = destSetup, d.a.isFinite, d.a >= 0 { report.destinationSetupTime = .microseconds(safeMicros(d.a)) }
        report.roundTrip = rtt0
        onEvent(.setupDone(report.setupTime))
        // From here the feedback thread owns reads on channel 0.
        try g.run(only: 0) { (_, ch) throws(TransferError) in ch.peekPeerErrors = false }
        feedback.start(connection: s[0], options: options, backend: backend, abort: abort)
        abort.onAbort { [feedback] in feedback.wake() }

        // Switchover's fixed costs, each for what it is:
        // - stop: the devices' own estimate, else the measured RUNNING → PRE_COPY transition
        //   (the nearest transition the source can time without stopping anything);
        // - config: saveConfig timed now (the blob is small; its transfer is in the data term);
        // - destination resume: the destination's devices' estimate, reported at setup;
        // - round trips: two (data → `loaded`, then `commit` → `resumed`), re-measured by a ping
        //   after every round, the smallest recent sample kept.
        var stopCost = setupTransition
        var resumeCost = Duration.zero
        var allStopKnown = true
        for s in savers {
            if let e = s.device.switchoverCostEstimate { stopCost = max(stopCost, e.stop); resumeCost += e.resume } else { allStopKnown = false }
        }
        if allStopKnown { stopCost = savers.compactMap { $0.device.switchoverCostEstimate?.stop }.max() ?? stopCost }
        if let d = destSetup, d.b.isFinite, d.b >= 0 { resumeCost = .microseconds(safeMicros(d.b)) }
        let c0 = Monotonic.now
        for s in savers { do throws(DeviceError) { _ = try s.device.saveConfig() } catch { throw device(error) } }
        let configCost = Monotonic.now - c0
        var sched = PrecopyScheduler(configuration: SchedulerConfiguration(
            downtimeLimit: configuration.downtimeLimit, maxBandwidth: configuration.maxBandwidth, policy: configuration.policy,
            deadline: configuration.deadline,
            defaultFixedCosts: FixedCosts(stopTransition: max(stopCost, .microseconds(100)), configState: configCost,
                                          destinationResume: max(resumeCost, .microseconds(100)), roundTrip: rtt0 * 2),
            maxIterations: configuration.maxIterations, predictionMargin: configuration.predictionMargin,
            minimumBandwidthSamples: configuration.minimumBandwidthSamples), start: Instant(nanoseconds: Monotonic.nanoseconds))
        let precopyDevices = savers.filter { $0.supportsPrecopy }
        for s in precopyDevices { sched.registerDevice(id: s.id) }
        let streams = precopyDevices.filter { $0.header.kind == 1 }

        // Pre-copy rounds until the scheduler says otherwise.
        var iteration = 0
        var decision: Action = .iterate(rateLimit: nil)
        var lastProbe = 0
        while true {
            if precopyDevices.isEmpty {
                // No device can pre-copy (a file, a device without PRE_COPY): every byte moves in
                // stop-copy, and rounds would only spin, so switch over at once.
                decision = .switchover(reason: .noPrecopy)
                break
            }
            iteration += 1
            var items: [SaveItem] = []
            for s in precopyDevices where s.header.kind == 0 {
                do throws(DeviceError) { try s.plan(chunkSize: options.chunkSize, into: &items) } catch { throw device(error) }
            }
            for s in streams { do throws(DeviceError) { try s.plan(chunkSize: options.chunkSize, into: &items) } catch { throw device(error) } }
            let ranges = items.filter { if case .range = $0 { true } else { false } }
            // With `--max-bandwidth`, the throttled rounds say nothing about the link stop-copy
            // will use unthrottled. So every fourth round after the bulk one goes unthrottled if
            // it is small (at most a quarter second of the cap): a bounded burst that samples
            // the real capacity.
            var probe = false
            if let cap = sched.precopyRateLimit, iteration > 1, iteration - lastProbe >= 4 {
                let planned = ranges.reduce(UInt64(0)) { if case .range(_, _, let n) = $1 { $0 + UInt64(n) } else { $0 } }
                if planned >= 1 << 20 && planned <= cap / 4 { probe = true; lastProbe = iteration }
            }
            let pacer = probe ? nil : sched.precopyRateLimit.map { Pacer(rate: $0) }
            let roundStart = Monotonic.now
            feedback.sent(round: UInt32(iteration))
            let (bytes, wire) = try sendRound(ranges, streams: streams, flags: [], iteration: iteration, pacer: pacer, counters: counters)
            if iteration == 1 {
                try g.run(only: 0) { (_, ch) throws(TransferError) in
                    for s in precopyDevices {
                        try ch.sendControl(.initDataSent, stream: UInt16(s.id), payload: counters.totals(device: s.id).encoded())
                    }
                }
            }
            // A round ends when the destination has loaded it, not when its last byte entered a
            // socket buffer: so the rate is what the path delivers, and no earlier round is
            // still in flight (megabytes in socket buffers and queues) when stop-copy starts.
            try feedback.waitRoundLoaded(UInt32(iteration), timeout: options.timeout)
            let duration = Monotonic.now - roundStart
            // With the path empty, a ping measures the round trip, not a queue (its pong lands
            // in a later round's estimate).
            let pingAt = Monotonic.nanoseconds
            try g.run(only: 0) { (_, ch) throws(TransferError) in try ch.sendControl(.ping, position: pingAt) }
            report.precopyBytes += bytes
            report.iterations = iteration
            // The first round is the bulk copy of the initial state: its rate says little about
            // stop-copy, which moves scattered dirty pages. Bandwidth is learned from the later
            // rounds, which look like stop-copy (so the first decision comes after round 2).
            if iteration > 1 {
                sched.recordSent(bytes: bytes, wireBytes: wire, over: duration)
                if probe { sched.recordUnthrottledSample(bytes: bytes, over: duration) }
            }
            // Load rates from the destination, each used once, and only for rounds that ran at
            // full speed (a throttled round measures the throttle, not the destination).
            for sample in feedback.takeLoadRates() where sample.round > 1 {
                if sched.precopyRateLimit == nil || Int(sample.round) == lastProbe {
                    sched.recordReceiverLoadRate(bytesPerSecond: sample.rate)
                    report.receiverLoadRate = sample.rate
                }
            }
            // The smallest of the last few pings (queueing behind data only adds), so the
            // estimate follows the path as it is now, up or down.
            if let rtt = feedback.roundTrip {
                sched.recordFixedCost(.roundTrip, rtt * 2)
                report.roundTrip = rtt
            }
            for id in feedback.takeAcks() { sched.switchoverAcknowledged(deviceID: id) }
            var dirty: UInt64 = 0
            for s in savers {
                let p: (precopy: UInt64, stopCopyOnly: UInt64)
                do throws(DeviceError) { p = try s.pending(chunkSize: options.chunkSize) } catch { throw device(error) }
                sched.updateRemaining(deviceID: s.id, dirtyBytes: p.precopy, stopCopyOnlyBytes: p.stopCopyOnly)
                dirty += p.precopy + p.stopCopyOnly
            }
            decision = sched.nextAction(now: Instant(nanoseconds: Monotonic.nanoseconds))
            Trace(start: start).mark("round \(iteration)\(probe ? " (probe)" : ""): \(bytes) bytes (\(wire) on the wire) in \(duration.milliseconds) ms; sender \(sched.senderRate.map { Int($0 / 1048576) } ?? -1) MiB/s, receiver \(sched.receiverRate.map { Int($0 / 1048576) } ?? -1) MiB/s, rtt \(feedback.roundTrip.map { $0.milliseconds } ?? -1) ms, remaining \(sched.remainingBytes), predicted \(sched.predictedDowntime.map { $0.milliseconds } ?? -1) ms")
            let round = IterationReport(iteration: iteration, sentBytes: bytes, wireBytes: wire, dirtyBytes: dirty,
                                        bandwidth: sched.bandwidthBytesPerSecond, predictedDowntime: sched.predictedDowntime,
                                        duration: duration, unthrottledProbe: probe)
            report.rounds.append(round)
            onEvent(.iteration(round))
            if let e = abort.error { throw e }
            if decision.isTerminal { break }
            // Pace tiny rounds: a round lasts at least `minimumRound`, so an idle device does not
            // spin through rounds (and the workload gets the CPU to dirty something).
            let elapsed = Monotonic.now - roundStart
            if elapsed < Self.minimumRound { sleep(for: Self.minimumRound - elapsed) }
        }
        if case .abort(let reason) = decision {
            report.converged = false
            throw TransferError(.aborted, "migration aborted, staying on the source: \(reason)")
        }
        guard case .switchover(let reason) = decision else { throw TransferError(.aborted, "unexpected scheduler decision") }
        report.converged = reason == .noPrecopy ? nil : (reason == .converged || reason == .nothingToSend)
        report.switchoverReason = reason.rawValue
        // Without a single round there is no bandwidth, so no prediction (not the fixed costs
        // alone, which would claim a multi-gigabyte stop-copy takes milliseconds).
        let predicted = reason == .noPrecopy ? nil : sched.predictedDowntime
        report.expectedDowntime = predicted
        onEvent(.switchover(predicted: predicted, reason: reason.rawValue))

        // complete_precopy: downtime starts when the first device leaves a running state.
        let downStart = Monotonic.now
        let trace = Trace(start: downStart)
        for s in savers { do throws(DeviceError) { _ = try s.enterStopCopy() } catch { throw device(error) } }
        trace.mark("devices in STOP_COPY")
        try g.run(only: 0) { (_, ch) throws(TransferError) in try ch.sendControl(.switchover) }
        var items: [SaveItem] = []
        for s in savers where s.header.kind == 0 {
            do throws(DeviceError) { try s.plan(chunkSize: options.chunkSize, into: &items) } catch { throw device(error) }
        }
        let allStreams = savers.filter { $0.header.kind == 1 }
        for s in allStreams { do throws(DeviceError) { try s.plan(chunkSize: options.chunkSize, into: &items) } catch { throw device(error) } }
        trace.mark("stop-copy planned (\(items.count) items)")
        feedback.sent(round: UInt32(iteration + 1))
        let (stopBytes, stopWire) = try sendRound(items.filter { if case .range = $0 { true } else { false } }, streams: allStreams,
                                                  flags: [.stopCopy], iteration: iteration + 1, pacer: nil, counters: counters)
        report.stopcopyBytes = stopBytes
        trace.mark("stop-copy data sent (\(stopBytes) bytes, \(stopWire) on the wire, \(items.count) items)")
        try g.run(only: 0) { (_, ch) throws(TransferError) in
            for s in savers {
                let config: [UInt8]
                do throws(DeviceError) { config = try s.device.saveConfig() } catch { throw TransferError(.device, error.message) }
                try ch.sendControl(.configState, stream: UInt16(s.id), payload: config)
                try ch.sendControl(.endOfState, stream: UInt16(s.id), payload: counters.totals(device: s.id).encoded())
            }
        }
        trace.mark("config and end of state sent")
        feedback.advance(to: .stateSent)
        try g.run { (_, ch) throws(TransferError) in
            try ch.sendControl(.channelEnd, payload: ChannelEnd(chunks: ch.stats.chunks, rawBytes: ch.stats.rawBytes).encoded())
        }
        trace.mark("channel ends sent")
        phaseHook?(.stateSent)

        // Two-phase handover: the destination has loaded and validated everything (its devices
        // wait in STOP); only now does the source give its devices up, for good.
        let loaded = try feedback.waitLoaded(timeout: options.timeout)
        trace.mark("destination loaded (load \(loaded.a) ms, validation \(loaded.b) ms)")
        phaseHook?(.loadedReceived)
        if let e = abort.error { throw e }
        // The point of no return: from the moment `commit` may be on the wire, restarting the
        // source devices could run them twice.
        committed = true
        feedback.advance(to: .committed)
        try g.run(only: 0) { (_, ch) throws(TransferError) in try ch.sendControl(.commit) }
        phaseHook?(.commitSent)
        let timings = try feedback.waitResumed(timeout: options.timeout)
        report.downtime = Monotonic.now - downStart
        trace.mark("destination resumed (resume \(timings.b) ms)")
        phaseHook?(.resumedReceived)
        report.destinationLoadTime = .microseconds(safeMicros(loaded.a))
        report.destinationResumeTime = .microseconds(safeMicros(timings.b))

        // Proof: the destination's digests against the source's (both devices are stopped
        // now, or running without a workload on the destination).
        let dest = try feedback.waitDigests(timeout: options.timeout + .seconds(60))
        var sourceDigests: [UInt64?] = []
        for s in savers {
            report.devices[s.id].bytes = counters.totals(device: s.id).bytes
            let d = try? s.device.digest()
            sourceDigests.append(d)
            report.devices[s.id].sourceDigest = d
            report.devices[s.id].destinationDigest = s.id < dest.digests.count ? dest.digests[s.id] : nil
        }
        let summary = MigrationSummary(downtime: report.downtime!, expected: report.expectedDowntime, limit: configuration.downtimeLimit,
                                       iterations: iteration, precopyBytes: report.precopyBytes, stopcopyBytes: report.stopcopyBytes,
                                       sourceDigests: sourceDigests)
        // The summary only informs the destination's report: its loss fails nothing.
        try? g.run(only: 0) { (_, ch) throws(TransferError) in try ch.sendControl(.endOfStream, payload: summary.encoded()) }
        let wires = Mutex<UInt64>(0)
        try g.run { (_, ch) throws(TransferError) in let x = ch.stats.wireBytes; wires.withLock { $0 += x } }
        report.wireBytes = wires.withLock { $0 }
        guard dest.digests.count == savers.count else {
            throw TransferError(.protocolViolation, "the destination reported \(dest.digests.count) digests for \(savers.count) devices")
        }
        for s in savers {
            let src = report.devices[s.id].sourceDigest, dst = report.devices[s.id].destinationDigest
            if src != nil && dst == nil {
                throw TransferError(.corruption, "device \(s.id) (\(s.device.spec)): the destination could not digest its state, so the copy is unverified")
            }
            if let src, let dst, src != dst {
                throw TransferError(.corruption, "device \(s.id) (\(s.device.spec)): the destination's state digest \(Hex.digest(dst)) differs from the source's \(Hex.digest(src))")
            }
        }
        for s in savers { do throws(DeviceError) { try s.cleanup(success: true) } catch { throw device(error) } }
    }
}

/// Switchover phase timings on stderr when DEVSTREAM_TRACE is set (a debugging aid).
struct Trace {
    let start: Duration
    let on = getenv("DEVSTREAM_TRACE") != nil
    func mark(_ what: @autoclosure () -> String) {
        guard on else { return }
        printWarning("trace: +\((Monotonic.now - start).milliseconds) ms \(what())")
    }
}

/// Milliseconds from the peer (any double) as whole microseconds, clamped to a sane range.
func safeMicros(_ ms: Double) -> Int64 {
    guard ms.isFinite, ms > 0 else { return 0 }
    return Int64(min(ms * 1000, 1e15))
}

import Glibc
import Synchronization
import DSSupport
import DSWire
import DSRing
import DSTransport
import DSDevices
import DSScheduler

/// One source run, phase by phase: `setup`, `precopy`, `stopCopy`, `handover`, `verify`
/// (`execute` calls them in order). Kept apart from `MigrationSource` so a failure can still
/// read what happened (the report, whether `commit` went out).
struct SourceRun {
    let savers: [DeviceSaver]
    let configuration: MigrationConfiguration
    let abort = AbortSignal(side: "source")
    var report: MigrationReport
    let progress: TransferProgress
    /// The caller's hold on the session: cancel, switchover, external bytes, statistics.
    let control: SessionControl
    /// The caller's event handler.
    let emit: @Sendable (MigrationEvent) -> Void
    let warn: @Sendable (String) -> Void
    let start: Duration
    let feedback = Feedback()
    var group: WorkerGroup<Channel>?
    var sockets: [Connection] = []
    var counters: SentCounters
    /// Set when `commit` is about to go out: from then on a failure must not restart the
    /// source devices (the destination may be running them).
    var committed = false
    /// When the first device left a running state (the measured downtime starts here).
    var downtimeStart: Duration?
    /// When the last round's dirty pages were harvested (for the harvest interval).
    var lastHarvest: Duration?

    /// How the channels reach the destination.
    enum Transport {
        /// Dial the destination's listener.
        case dial(Endpoint)
        /// Connected sockets from the caller, one per channel (the session takes them).
        case adopt([Int32])
    }

    init(savers: [DeviceSaver], configuration: MigrationConfiguration, report: MigrationReport, progress: TransferProgress,
         control: SessionControl, emit: @escaping @Sendable (MigrationEvent) -> Void, warn: @escaping @Sendable (String) -> Void,
         start: Duration) {
        self.savers = savers
        self.configuration = configuration
        self.report = report
        self.progress = progress
        self.control = control
        self.emit = emit
        self.warn = warn
        self.start = start
        counters = SentCounters(devices: savers.count, channels: configuration.transfer.connections)
    }

    var options: TransferOptions { configuration.transfer }

    mutating func shutdown() {
        group?.shutdown()
        group = nil
        abort.shutdownAll()
        feedback.join()
        for c in sockets { c.close() }
        sockets = []
    }

    mutating func execute(_ transport: Transport) throws(TransferError) {
        control.attach(abort)
        try options.validate()
        guard !savers.isEmpty, savers.count <= WireLimits.maxDevices else {
            throw TransferError(.usage, "a migration carries 1...\(WireLimits.maxDevices) devices, got \(savers.count)")
        }
        let setup = try self.setup(transport)
        var scheduler = try makeScheduler(setup)
        control.update { $0.phase = .precopy }
        let rounds = try precopy(&scheduler)
        control.update { $0.phase = .stopCopy }
        try stopCopy(after: rounds)
        control.update { $0.phase = .handover }
        try handover()
        control.update { $0.phase = .verifying }
        try verify()
    }

    /// Reports a handover step (events; tests stop a process there).
    func passed(_ phase: HandoverPhase) { emit(.handover(phase)) }

    /// A channel group job on channel 0 only.
    func onChannel0(_ job: @escaping (Channel) throws(TransferError) -> Void) throws(TransferError) {
        guard let group else { throw TransferError(.aborted, "the migration's channels are closed") }
        try group.run(only: 0) { (_, ch) throws(TransferError) in try job(ch) }
    }

    /// A device's error as the session's, the device error kept as its cause.
    func device(_ error: DeviceError) -> TransferError { TransferError(.device, error.message, cause: error) }

    /// Runs `body` for every saver, a device error becoming the session's.
    func eachSaver(_ body: (DeviceSaver) throws(DeviceError) -> Void) throws(TransferError) {
        for s in savers { do throws(DeviceError) { try body(s) } catch { throw device(error) } }
    }

    /// What `setup` learned: the RUNNING → PRE_COPY transition time, the destination's accept
    /// and the best of three round trips.
    struct SetupResult {
        var transition: Duration
        var accept: SetupAccept?
        var roundTrip: Duration
    }

    /// save_setup: devices enter PRE_COPY; headers go on channel 0; the destination answers once
    /// its devices are set up (RESUMING), with how long that took. Only then is the round trip
    /// measured, by pings the destination answers at once: the setup time (a destination
    /// reserving gigabytes) is reported on its own, never mistaken for latency.
    mutating func setup(_ transport: Transport) throws(TransferError) -> SetupResult {
        let backend = IOBackend.resolve(options.backend, warn: warn)
        let (g, s): (WorkerGroup<Channel>, [Connection])
        switch transport {
        case .dial(let endpoint):
            (g, s) = try ChannelSet.connect(to: endpoint, options: options, mode: .migration, totalSize: nil,
                                            abort: abort, backend: backend, warn: warn)
        case .adopt(let fds):
            (g, s) = try ChannelSet.connect(adopting: fds, options: options, mode: .migration, totalSize: nil,
                                            abort: abort, backend: backend, warn: warn)
        }
        group = g
        sockets = s
        let t0 = Monotonic.now
        try eachSaver { s throws(DeviceError) in try s.saveSetup() }
        let transition = Monotonic.now - t0
        let reply = Mutex<(SetupAccept?, Duration?)>((nil, nil))
        let savers = self.savers
        try onChannel0 { ch throws(TransferError) in
            for s in savers {
                try ch.sendControl(.deviceSection, stream: UInt16(s.id), aux: UInt32(savers.count), payload: s.header.encoded())
            }
            let accept = try ch.receive()
            guard accept.header.type == .accept else { throw Channel.unexpected(accept, expecting: "setup accept", channel: 0) }
            let timings = try? SetupAccept.decodeIfPresent(accept.control)
            let rtt = try Self.bestRoundTrip(ch, samples: 3)
            reply.withLock { $0 = (timings ?? nil, rtt) }
        }
        let (accept, rtt) = reply.withLock { $0 }
        let result = SetupResult(transition: transition, accept: accept, roundTrip: rtt ?? .milliseconds(1))
        report.setupTime = Monotonic.now - start
        if let d = accept?.setupMilliseconds, d.isFinite, d >= 0 { report.destinationSetupTime = .microseconds(safeMicros(d)) }
        report.roundTrip = result.roundTrip
        control.update { $0.setupTime = report.setupTime }
        emit(.setupDone(report.setupTime))
        // From here the feedback thread owns reads on channel 0.
        try onChannel0 { ch throws(TransferError) in ch.peekPeerErrors = false }
        try feedback.start(connection: s[0], options: options, backend: backend, abort: abort)
        abort.onAbort { [feedback] in feedback.wake() }
        return result
    }

    /// The smallest of `samples` ping round trips on `ch` (the destination answers at once).
    static func bestRoundTrip(_ ch: Channel, samples: Int) throws(TransferError) -> Duration? {
        var best: Duration?
        for _ in 0..<samples {
            let sent = Monotonic.nanoseconds
            try ch.sendControl(.ping, position: sent)
            let pong = try ch.receive()
            guard pong.header.type == .pong, pong.header.position == sent else {
                throw Channel.unexpected(pong, expecting: "pong", channel: 0)
            }
            let rtt = Duration.nanoseconds(Int64(clamping: Monotonic.nanoseconds &- sent))
            best = min(best ?? rtt, rtt)
        }
        return best
    }

    /// One round's plan: every addressable device's dirty pages as `pages` frames, then a
    /// drain per stream device.
    func plan(_ devices: [DeviceSaver]) throws(TransferError) -> (plan: RoundPlanItems, streams: [DeviceSaver]) {
        var plan = RoundPlanItems()
        let streams = devices.filter { $0.kind == .orderedStream }
        for s in devices where s.kind == .addressable {
            do throws(DeviceError) { try s.plan(chunkSize: options.chunkSize, into: &plan) } catch { throw device(error) }
        }
        // A stream's plan is a drain (every channel drains it after its pages).
        for s in streams {
            do throws(DeviceError) { try s.plan(chunkSize: options.chunkSize, into: &plan) } catch { throw device(error) }
        }
        return (plan, streams)
    }

    func roundSender() throws(TransferError) -> RoundSender {
        guard let group else { throw TransferError(.aborted, "the migration's channels are closed") }
        return RoundSender(group: group, savers: savers, counters: counters, progress: progress)
    }
}

/// Milliseconds from the peer (any double) as whole microseconds, clamped to a sane range.
func safeMicros(_ ms: Double) -> Int64 {
    guard ms.isFinite, ms > 0 else { return 0 }
    return Int64(min(ms * 1000, 1e15))
}

/// Switchover phase timings on stderr when tracing is on (a debugging aid).
struct Trace {
    let start: Duration
    let on: Bool
    let warn: @Sendable (String) -> Void
    func mark(_ what: @autoclosure () -> String) {
        guard on else { return }
        warn("trace: +\((Monotonic.now - start).milliseconds) ms \(what())")
    }
}

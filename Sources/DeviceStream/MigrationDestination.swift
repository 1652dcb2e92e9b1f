import Glibc
import Synchronization
import DSWire
import DSRing
import DSTransport
import DSDevices
import DSSupport

/// The destination end of a live migration (`devstream receive --device`).
///
/// It accepts one migration session, matches the source's device headers to its own devices
/// (each in RESUMING), loads chunks as they arrive on N channels — at their offsets, or in
/// sequence for stream devices — tells the source when each device's initial data is loaded
/// (switchover-ack), and after every device's end of state has been verified against what
/// was loaded, takes the devices RESUMING → STOP and says `loaded`, and only on the source's
/// `commit` takes them to RUNNING. A failure before `commit` leaves the devices not running;
/// after it they run, and the error says so.
public final class MigrationDestination: @unchecked Sendable {
    // @unchecked: `devices` is written only by `run`'s setup phase (worker 0, while the caller
    // waits) and read after it.
    /// Makes destination device `index` (in RESUMING) at load setup; `sourceSize` is the source
    /// device's state size for an addressable device (nil for a stream device). It comes from
    /// the peer: check it before allocating anything for it.
    public typealias DeviceFactory = @Sendable (_ index: Int, _ sourceSize: UInt64?) throws(DeviceError) -> any MigratableDevice

    /// The destination devices (made at load setup when the destination was given a factory).
    public private(set) var devices: [any MigratableDevice]
    private let factory: (count: Int, make: DeviceFactory)?
    public let listener: SessionListener
    public let options: TransferOptions
    /// Called as the handover passes each step (logging; tests stop the process there). Set it
    /// before `run`.
    public var phaseHook: (@Sendable (HandoverPhase) -> Void)?
    private let warn: @Sendable (String) -> Void

    /// Binds `endpoint` (port 0 picks one: `listener.endpoint`) and starts accepting.
    public init(listen endpoint: Endpoint, devices: [any MigratableDevice], options: TransferOptions,
                warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        try options.validate()
        self.devices = devices
        self.factory = nil
        self.options = options
        self.warn = warn
        listener = try SessionListener(endpoint: endpoint, options: options, warn: warn)
        listener.start()
    }

    /// Like `init(listen:devices:options:)`, but the `deviceCount` devices are made by
    /// `makeDevice` at load setup, once the source's headers give their sizes (a file
    /// destination needs one).
    public init(listen endpoint: Endpoint, deviceCount: Int, makeDevice: @escaping DeviceFactory, options: TransferOptions,
                warn: @escaping @Sendable (String) -> Void = { printWarning($0) }) throws(TransferError) {
        try options.validate()
        self.devices = []
        self.factory = (deviceCount, makeDevice)
        self.options = options
        self.warn = warn
        listener = try SessionListener(endpoint: endpoint, options: options, warn: warn)
        listener.start()
    }

    /// Closes the devices this destination made with its factory.
    public func closeDevices() { if factory != nil { for d in devices { d.close() } } }

    /// Receives one migration.
    public func run(acceptTimeout: Duration? = nil) -> MigrationReport {
        var report = MigrationReport()
        let start = Monotonic.now
        let abort = AbortSignal(side: "destination")
        var sockets: [Int32] = []
        var loaders: [DeviceLoader] = []
        do throws(TransferError) {
            let (session, s) = try listener.waitForSession(timeout: acceptTimeout)
            sockets = s
            guard session.mode == .migration else {
                for fd in s { abort.watch(fd) }
                throw TransferError(.protocolViolation, "the sender started a plain transfer, but this receiver expects a migration (--device)")
            }
            report.connections = session.channelCount
            report.compression = session.features.contains(.lz4)
            try load(session, sockets: s, abort: abort, report: &report, loaders: &loaders)
            report.completed = true
        } catch {
            abort.abort(error)
            for l in loaders { l.wake() }
            let states = devices.map { $0.state == .running ? "\($0.spec) is RUNNING" : "\($0.spec) is not running (state \($0.state))" }
            report.error = TransferError(error.code, "\(error.message); on the destination \(states.joined(separator: ", "))")
        }
        listener.stop()
        for fd in sockets { close(fd) }
        report.totalTime = Monotonic.now - start
        return report
    }

    private func load(_ session: SessionInfo, sockets: [Int32], abort: AbortSignal, report: inout MigrationReport,
                      loaders: inout [DeviceLoader]) throws(TransferError) {
        let backend = options.backend ?? IOBackend.preferred
        let group = try ChannelSet.serve(session, sockets: sockets, options: options, abort: abort, backend: backend, warn: warn)
        defer { group.shutdown() }
        let n = session.channelCount
        let devices = self.devices
        let factory = self.factory
        let options = self.options
        let phaseHook = self.phaseHook
        let setupStart = Monotonic.now

        // load_setup: device headers on channel 0, matched to the local devices.
        let made = Mutex<[DeviceLoader]>([])
        try group.run(only: 0) { (_, ch) throws(TransferError) in
            var count = Int.max
            var list: [DeviceLoader] = []
            while list.count < count {
                let f = try ch.receive()
                guard f.header.type == .deviceSection else { throw Channel.unexpected(f, expecting: "device section", channel: 0) }
                count = Int(f.header.aux)
                let have = factory?.count ?? devices.count
                guard count == have else {
                    throw TransferError(.usage, "the source migrates \(count) device(s) but this destination has \(have) (--device)")
                }
                let id = Int(f.header.stream)
                guard id == list.count else { throw TransferError(.protocolViolation, "device section \(id) out of order") }
                let header: DeviceHeader
                do { header = try DeviceHeader.decode(f.control) } catch {
                    throw TransferError(.protocolViolation, "malformed device section: \(error)")
                }
                do throws(DeviceError) {
                    let device: any MigratableDevice
                    if let factory {
                        device = try factory.make(id, header.kind == 0 ? header.size : nil)
                        made.withLock { _ in self.devices.append(device) }
                    } else {
                        device = devices[id]
                    }
                    list.append(try DeviceLoader(id: id, device: device, header: header, channels: n))
                } catch {
                    throw TransferError(.device, error.message)
                }
            }
            made.withLock { $0 = list }
            // The accept says how long setup took and what resuming should cost, so the
            // source counts neither as network latency.
            var resume = 0.0
            for l in list { resume += l.device.switchoverCostEstimate?.resume.milliseconds ?? 1 }
            try ch.sendControl(.accept, payload: Timings(a: (Monotonic.now - setupStart).milliseconds, b: resume).encoded())
        }
        loaders = made.withLock { $0 }
        let loadersCopy = loaders
        report.devices = loaders.map { DeviceReport(id: $0.id, spec: $0.device.spec, bytes: 0) }
        report.setupTime = Monotonic.now - setupStart

        for l in loadersCopy { abort.onAbort { l.wake() } }
        let barrier = RoundBarrier(channels: n)
        abort.onAbort { barrier.wake() }

        // Control replies share channel 0's socket with worker 0's receives: one sender at a time.
        let guard0 = Mutex<SocketGuard?>(nil)
        try group.run(only: 0) { (_, ch) throws(TransferError) in let g = ch.socketGuard; guard0.withLock { $0 = g } }
        let control = ControlReplies(fd: sockets[0], guard: guard0.withLock { $0 }, timeout: options.timeout)
        let pendingInit = Mutex<[Int: [UInt64]]>([:])
        let acked = Mutex<Set<Int>>([])
        let endOfState = Mutex<[Int: DeviceTotals]>([:])
        let configs = Mutex<Set<Int>>([])
        let loadStart = Monotonic.now
        // The load rate per round: bytes loaded between round marks over the time from the
        // round's first chunk to its mark (idle gaps between rounds do not count).
        let roundRate = Mutex<(lastBytes: UInt64, firstData: Duration?)>((0, nil))
        @Sendable func checkAck(_ d: Int) throws(TransferError) {
            guard let counts = pendingInit.withLock({ $0[d] }), !acked.withLock({ $0.contains(d) }) else { return }
            guard loadersCopy[d].hasLoaded(counts) else { return }
            let first = acked.withLock { $0.insert(d).inserted }
            if first { try control.send(.switchoverAck, stream: UInt16(d)) }
        }
        try group.run { (i, ch) throws(TransferError) in
            while true {
                let f = try ch.receive()
                let h = f.header
                let d = Int(h.stream)
                if h.type != .channelEnd && h.type != .iterationMark && h.type != .switchover && h.type != .ping {
                    guard d < loadersCopy.count else { throw TransferError(.protocolViolation, "frame for unknown device \(d)") }
                }
                switch h.type {
                case .data:
                    roundRate.withLock { if $0.firstData == nil { $0.firstData = Monotonic.now } }
                    try loadersCopy[d].load(f.bytes, at: h.position, channel: i, ring: ch.ring, slot: f.slot)
                    try checkAck(d)
                case .streamData:
                    roundRate.withLock { if $0.firstData == nil { $0.firstData = Monotonic.now } }
                    try loadersCopy[d].loadStream(f.bytes, seq: h.position, channel: i, timeout: options.timeout, abort: abort)
                    try checkAck(d)
                case .iterationMark:
                    // No channel reads round k+1 until every channel has loaded round k: a page
                    // sent again in a later round (on another channel) must land after its older
                    // copy, never under it.
                    try barrier.arrive(round: h.aux, abort: abort, timeout: options.timeout)
                    if i == 0 {
                        let loaded = loadersCopy.reduce(UInt64(0)) { $0 + $1.loadedBytes }
                        let now = Monotonic.now
                        let rate = roundRate.withLock { r -> Double? in
                            defer { r = (loaded, nil) }
                            guard let first = r.firstData, loaded - r.lastBytes >= 1 << 20 else { return nil }
                            return Double(loaded - r.lastBytes) / max((now - first).seconds, 1e-6)
                        }
                        // Sent for every round, rate or not: the source ends its round on it.
                        try control.send(.loadStats, aux: h.aux, payload: Timings(a: Double(loaded), b: rate ?? 0).encoded())
                    }
                case .initDataSent where i == 0:
                    let t: DeviceTotals
                    do { t = try DeviceTotals.decode(f.control, channels: n) } catch {
                        throw TransferError(.protocolViolation, "malformed init-data-sent: \(error)")
                    }
                    pendingInit.withLock { $0[d] = t.chunksPerChannel }
                    try checkAck(d)
                case .switchover where i == 0:
                    break
                case .ping where i == 0:
                    try control.send(.pong, position: h.position)
                case .configState where i == 0:
                    do { try loadersCopy[d].device.loadConfig(f.control) } catch {
                        throw TransferError(.device, "device \(d) refused its config state: \(error)")
                    }
                    configs.withLock { _ = $0.insert(d) }
                case .endOfState where i == 0:
                    let t: DeviceTotals
                    do { t = try DeviceTotals.decode(f.control, channels: n) } catch {
                        throw TransferError(.protocolViolation, "malformed end of state: \(error)")
                    }
                    endOfState.withLock { $0[d] = t }
                case .channelEnd:
                    let end: ChannelEnd
                    do { end = try ChannelEnd.decode(f.control) } catch {
                        throw TransferError(.protocolViolation, "malformed channel end: \(error)")
                    }
                    guard end.chunks == ch.stats.chunks, end.rawBytes == ch.stats.rawBytes else {
                        throw TransferError(.corruption, "channel \(i) ended with \(ch.stats.chunks) chunks received but \(end.chunks) sent")
                    }
                    return
                default:
                    throw Channel.unexpected(f, expecting: "migration data", channel: i)
                }
                if h.type.isData { ch.stats.chunks += 1; ch.stats.rawBytes += UInt64(h.rawLength) }
            }
        }

        // Every device's end of state must match what was loaded, chunk for chunk, per channel.
        let ends = endOfState.withLock { $0 }
        for l in loaders {
            guard let t = ends[l.id] else { throw TransferError(.corruption, "device \(l.id): the stream ended without its end-of-state") }
            guard l.loadedPerChannel == t.chunksPerChannel, l.loadedBytes == t.bytes else {
                throw TransferError(.corruption, "device \(l.id): loaded \(l.loadedBytes) bytes in \(l.loadedPerChannel) chunks per channel, but the source sent \(t.bytes) in \(t.chunksPerChannel)")
            }
            guard configs.withLock({ $0.contains(l.id) }) else { throw TransferError(.corruption, "device \(l.id): no config state arrived") }
        }
        let loadTime = Monotonic.now - loadStart

        // Two-phase handover. Phase one: every device validates what it got (RESUMING → STOP)
        // and waits there; `loaded` tells the source. Phase two only on the source's `commit`:
        // STOP → RUNNING. If the source goes away first, the devices stay in STOP.
        let validateStart = Monotonic.now
        for l in loaders {
            do throws(DeviceError) { try l.validate() } catch {
                throw TransferError(.device, "device \(l.id) (\(l.device.spec)) refused its state: \(error)")
            }
        }
        let validateTime = Monotonic.now - validateStart
        try control.send(.loaded, payload: Timings(a: loadTime.milliseconds, b: validateTime.milliseconds).encoded())
        phaseHook?(.loadedSent)
        try group.run(only: 0) { (_, ch) throws(TransferError) in
            while true {
                let f: ReceivedFrame
                do throws(TransferError) { f = try ch.receive() } catch {
                    throw TransferError(error.code, "waiting for the source to commit: \(error.message)")
                }
                switch f.header.type {
                case .commit: return
                case .ping: try control.send(.pong, position: f.header.position)
                default: throw Channel.unexpected(f, expecting: "commit", channel: 0)
                }
            }
        }
        let commitAt = Monotonic.now
        phaseHook?(.commitReceived)
        for l in loaders {
            do throws(DeviceError) { try l.run() } catch { throw TransferError(.device, "device \(l.id) (\(l.device.spec)) cannot resume: \(error)") }
        }
        let resumeTime = Monotonic.now - commitAt
        report.destinationLoadTime = loadTime
        report.destinationResumeTime = validateTime + resumeTime
        // From here the devices run. If the source cannot be told, the migration is not
        // "completed" (the source may report it failed), and the error says the devices run here.
        do throws(TransferError) {
            try control.send(.resumed, payload: Timings(a: resumeTime.milliseconds, b: (validateTime + resumeTime).milliseconds).encoded())
            phaseHook?(.running)
            var digests: [UInt64?] = []
            for l in loaders {
                let d = try? l.device.digest()
                digests.append(d)
                report.devices[l.id].destinationDigest = d
                report.devices[l.id].bytes = l.loadedBytes
            }
            try control.send(.ack, payload: DigestList(digests: digests).encoded())
        } catch {
            throw TransferError(error.code, "the source committed and the devices run here, but telling the source failed (\(error.message)); it may report the migration as failed: check both sides before using the devices")
        }
        report.receiverLoadRate = Double(loaders.reduce(UInt64(0)) { $0 + $1.loadedBytes }) / max(loadTime.seconds, 1e-6)

        // The source's summary: downtime as it measured it, and its digests.
        let summary = Mutex<MigrationSummary?>(nil)
        // Read without aborting, giving the source time to digest large devices. Its loss leaves
        // the copy verified by chunk counts and checksums only (said in a warning); digests
        // that differ fail the migration here as at the source.
        try? group.run(only: 0) { (_, ch) throws(TransferError) in
            guard let f = try? ch.receive(timeout: options.timeout + .seconds(600)), f.header.type == .endOfStream,
                  let s = try? MigrationSummary.decode(f.control) else { return }
            summary.withLock { $0 = s }
        }
        let wires = Mutex<UInt64>(0)
        try? group.run { (_, ch) throws(TransferError) in let x = ch.stats.wireBytes; wires.withLock { $0 += x } }
        report.wireBytes = wires.withLock { $0 }
        if let s = summary.withLock({ $0 }) {
            report.downtime = s.downtime
            report.expectedDowntime = s.expected
            report.downtimeLimit = s.limit
            report.iterations = s.iterations
            report.precopyBytes = s.precopyBytes
            report.stopcopyBytes = s.stopcopyBytes
            for (i, d) in s.sourceDigests.enumerated() where i < report.devices.count { report.devices[i].sourceDigest = d }
            for d in report.devices {
                if let src = d.sourceDigest, let dst = d.destinationDigest, src != dst {
                    throw TransferError(.corruption, "device \(d.id) (\(d.spec)): the state digest here \(Hex.digest(dst)) differs from the source's \(Hex.digest(src))")
                }
            }
        } else {
            warn("warning: the source's summary did not arrive: the devices run with every chunk verified, but the whole-device digests were not compared here")
        }
    }
}

/// Destination → source frames on channel 0, sent with plain blocking syscalls under a lock
/// (they are small and rare; worker 0 keeps receiving on the same socket meanwhile).
final class ControlReplies: Sendable {
    let fd: Int32
    let lock = Mutex(())
    /// Marks a reply in flight, so an abort's farewell frame is not spliced into it.
    let socketGuard: SocketGuard?
    let timeout: Duration
    init(fd: Int32, guard socketGuard: SocketGuard?, timeout: Duration) {
        self.fd = fd; self.socketGuard = socketGuard; self.timeout = timeout
    }

    /// Sends one frame within `timeout`: a source that stops reading (its socket buffer full)
    /// fails the send instead of blocking the destination forever.
    func send(_ type: FrameType, stream: UInt16 = 0, aux: UInt32 = 0, position: UInt64 = 0, payload: [UInt8] = []) throws(TransferError) {
        let bytes = controlFrame(type, stream: stream, aux: aux, position: position, payload: payload)
        let deadline = Monotonic.now + timeout
        let secure = SecureStream.forSocket(fd)
        let failure: String? = lock.withLock { _ in
            socketGuard?.setMidFrame(true)
            defer { socketGuard?.setMidFrame(false) }
            return bytes.withUnsafeBytes { b -> String? in
                // A TLS session: encrypted, blocking send within the timeout (no ring here).
                if let secure {
                    do { try secure.sendAll(b, ring: nil, timeout: timeout); return nil } catch { return "\(error)" }
                }
                if let e = Sockets.sendAll(fd: fd, b, deadline: deadline) {
                    return e == .timedOut ? "the source has not read its socket for \(timeout)" : "\(e)"
                }
                return nil
            }
        }
        if let failure { throw TransferError(.peerClosed, "sending \(type) to the source failed: \(failure)") }
    }
}

/// Keeps the destination's channels in step at round marks: a channel that has loaded round k
/// waits for the others to load theirs before it reads round k+1. The source sends a mark on
/// every channel after each round (and never starts round k+1 before all of them), so the wait
/// ends as soon as the slowest channel has drained round k. A stalled channel is caught by its
/// own receive timeout, which aborts the session and wakes the waiters; a channel that keeps
/// sending without ever marking the round is caught by the wait's own timeout.
final class RoundBarrier: Sendable {
    private let lock = ConditionLock()
    /// Marks seen per round not yet complete, and the highest complete round.
    private let state: Mutex<(counts: [UInt32: Int], completed: UInt32?)> = Mutex(([:], nil))
    let channels: Int
    init(channels: Int) { self.channels = channels }

    func arrive(round: UInt32, abort: AbortSignal, timeout: Duration) throws(TransferError) {
        var outOfStep = false
        var inTime = true
        lock.withLock {
            state.withLock { s in
                // A source sends the same increasing rounds on every channel, so a mark for a
                // round already complete, or too many rounds open at once, is a broken peer.
                if let c = s.completed, round <= c { outOfStep = true; return }
                s.counts[round, default: 0] += 1
                if s.counts[round]! > channels || s.counts.count > 4 { outOfStep = true; return }
                if s.counts[round]! == channels {
                    s.counts[round] = nil
                    s.completed = max(s.completed ?? 0, round)
                }
            }
            lock.broadcast()
            if outOfStep { return }
            inTime = lock.wait(until: {
                abort.isAborted || state.withLock { s in s.completed.map { $0 >= round } ?? false }
            }, timeout: timeout)
        }
        if outOfStep { throw TransferError(.protocolViolation, "round marks out of step (round \(round))") }
        if !inTime && !abort.isAborted {
            throw TransferError(.protocolViolation, "round marks out of step: round \(round) was not marked on every channel within \(timeout) (a channel kept sending without closing the round)")
        }
        if let e = abort.error { throw e }
    }

    func wake() { lock.withLock { lock.broadcast() } }
}

import Synchronization
import DSSupport
import DSWire
import DSRing
import DSTransport
import DSDevices

/// One destination run, phase by phase: `setup` (device sections → loaders, the setup
/// `accept`), `load` (every channel's frames into `LoadState` until every channel ends, then the
/// counts checked), `handover` (validate, `loaded`, wait for `commit`, run, `resumed`, digests)
/// and `summary` (the source's closing summary). The handover's order is the destination side
/// of the shared `Handover` machine.
final class DestinationRun: @unchecked Sendable {
    // @unchecked: the phases run one after another on the caller's thread; channel threads only
    // touch `LoadState` (its own lock) and the immutable fields.
    let session: SessionInfo
    let options: TransferOptions
    let abort: AbortSignal
    let warn: @Sendable (String) -> Void
    let emit: @Sendable (MigrationEvent) -> Void
    let control: SessionControl
    let progress: TransferProgress
    let resumeHold: Duration?
    let group: WorkerGroup<Channel>
    let replies: ControlReplies
    var report: MigrationReport
    private(set) var loaders: [DeviceLoader] = []
    private var handoverState = Handover(side: .destination)
    private var loadTime = Duration.zero

    init(session: SessionInfo, sockets: [Connection], options: TransferOptions, abort: AbortSignal,
         warn: @escaping @Sendable (String) -> Void, emit: @escaping @Sendable (MigrationEvent) -> Void,
         control: SessionControl, progress: TransferProgress, resumeHold: Duration?, report: MigrationReport) throws(TransferError) {
        self.session = session
        self.options = options
        self.abort = abort
        self.warn = warn
        self.emit = emit
        self.control = control
        self.progress = progress
        self.resumeHold = resumeHold
        self.report = report
        let backend = IOBackend.resolve(options.backend, warn: warn)
        group = try ChannelSet.serve(session, connections: sockets, options: options, abort: abort, backend: backend, warn: warn)
        // Control replies share channel 0's connection with worker 0's receives.
        replies = ControlReplies(connection: sockets[0], timeout: options.timeout)
    }

    func shutdown() { group.shutdown() }

    private func onChannel0(_ job: @escaping (Channel) throws(TransferError) -> Void) throws(TransferError) {
        try group.run(only: 0) { (_, ch) throws(TransferError) in try job(ch) }
    }

    /// load_setup: device headers on channel 0, matched to the local devices by `makeLoaders`;
    /// the `accept` says how long setup took and what resuming should cost, so the source counts
    /// neither as network latency.
    func setup(makeLoaders: @escaping ([DeviceHeader]) throws(TransferError) -> [DeviceLoader]) throws(TransferError) {
        let setupStart = Monotonic.now
        let made = Mutex<[DeviceLoader]>([])
        let deadline = setupStart + options.timeout
        try onChannel0 { ch throws(TransferError) in
            let list = try makeLoaders(try Self.receiveHeaders(ch, before: deadline))
            made.withLock { $0 = list }
            let resume = list.reduce(0.0) { $0 + ($1.device.switchoverCostEstimate?.resume.milliseconds ?? 1) }
            let accept = SetupAccept(setupMilliseconds: (Monotonic.now - setupStart).milliseconds, resumeEstimateMilliseconds: resume)
            try ch.sendControl(.accept, payload: accept.encoded())
        }
        loaders = made.withLock { $0 }
        report.devices = loaders.map { DeviceReport(id: $0.id, spec: $0.device.spec, bytes: 0) }
        report.setupTime = Monotonic.now - setupStart
        control.update { [report, n = loaders.count] in $0.setupTime = report.setupTime; $0.deviceBytes = Array(repeating: 0, count: n); $0.phase = .precopy }
        emit(.setupDone(report.setupTime))
    }

    /// The source's `deviceSection`s, in order, as many as the first one's `aux` says, all
    /// before `deadline` (setup's overall deadline: the stall timeout after the session opened).
    private static func receiveHeaders(_ ch: Channel, before deadline: Duration) throws(TransferError) -> [DeviceHeader] {
        var headers: [DeviceHeader] = []
        var count = Int.max
        while headers.count < count {
            let f = try ch.receive(before: deadline, phase: "waiting for the source's device sections")
            guard f.header.type == .deviceSection else { throw Channel.unexpected(f, expecting: "device section", channel: 0) }
            let n = Int(f.header.aux)
            guard n >= 1, n <= WireLimits.maxDevices, count == Int.max || n == count else {
                throw TransferError(.protocolViolation, "device sections disagree on the device count (\(n))")
            }
            count = n
            guard Int(f.header.stream) == headers.count else { throw TransferError(.protocolViolation, "device section \(f.header.stream) out of order") }
            do { headers.append(try DeviceHeader.decode(f.control)) } catch {
                throw TransferError(.protocolViolation, "malformed device section: \(error)")
            }
        }
        return headers
    }

    /// load_state: every channel's frames until its `channelEnd`, then every device's counts.
    func load() throws(TransferError) {
        let state = LoadState(loaders: loaders, channels: session.channelCount, replies: replies, abort: abort,
                              timeout: options.timeout, progress: progress, control: control, emit: emit)
        let loadStart = Monotonic.now
        try group.run { (i, ch) throws(TransferError) in
            while try !state.handle(try ch.receive(), channel: i, ch) {}
        }
        try state.verifyComplete()
        handoverState.stateSent()
        loadTime = Monotonic.now - loadStart
        report.destinationLoadTime = loadTime
        report.receiverLoadRate = Double(state.loadedBytes) / max(loadTime.seconds, 1e-6)
    }

    /// Two-phase handover. Phase one: every device validates what it got (RESUMING → STOP) and
    /// waits there; `loaded` tells the source. Phase two only on the source's `commit`: STOP →
    /// RUNNING. If the source goes away first, the devices stay in STOP.
    func handover() throws(TransferError) {
        let validateStart = Monotonic.now
        for l in loaders {
            do throws(DeviceError) { try l.validate() } catch {
                throw TransferError(.device, "device \(l.id) (\(l.device.spec)) refused its state: \(error)")
            }
        }
        let validateTime = Monotonic.now - validateStart
        try replies.send(.loaded, payload: Loaded(loadMilliseconds: loadTime.milliseconds, validateMilliseconds: validateTime.milliseconds).encoded())
        handoverState.sent(.loaded)
        control.update { $0.phase = .handover }
        emit(.handover(.loadedSent))
        try waitForCommit()
        // The commit point here: a cancel before it wins (the devices never run); after it, it
        // is only reported.
        guard control.commit() else { throw SessionControl.cancelError }
        let commitAt = Monotonic.now
        emit(.handover(.commitReceived))
        try holdResume()
        for l in loaders {
            do throws(DeviceError) { try l.run() } catch { throw TransferError(.device, "device \(l.id) (\(l.device.spec)) cannot resume: \(error)") }
        }
        let resumeTime = Monotonic.now - commitAt
        report.destinationResumeTime = validateTime + resumeTime
        // From here the devices run. If the source cannot be told, the migration is not
        // "completed" (the source may report it failed), and the error says the devices run here.
        do throws(TransferError) {
            try replies.send(.resumed, payload: Resumed(commitToRunningMilliseconds: resumeTime.milliseconds,
                                                        resumeMilliseconds: (validateTime + resumeTime).milliseconds).encoded())
            handoverState.sent(.resumed)
            emit(.handover(.running))
            try replies.send(.ack, payload: DeviceDigests(digestLoaded()).encoded())
            handoverState.sent(.ack)
        } catch {
            throw TransferError(error.code, "the source committed and the devices run here, but telling the source failed (\(error.message)); it may report the migration as failed: check both sides before using the devices",
                                hint: error.hint, cause: error.cause)
        }
    }

    /// With `resumeHold`: the devices wait in STOP until the caller's `resume()`, within the hold.
    private func holdResume() throws(TransferError) {
        guard let hold = resumeHold else { return }
        guard control.waitForResume(timeout: hold, abort: abort) else {
            if let e = abort.error { throw e }
            throw TransferError(.timeout, "resume() was not called within \(hold) of the source's commit: the devices stay in STOP here, and the source has given its own up",
                                hint: "call resume() sooner, or raise the hold; check both hosts before running the devices anywhere")
        }
    }

    /// Reads channel 0 until `commit` (answering pings), within the stall timeout of `loaded`
    /// overall (pings do not extend it); any other frame is out of order.
    private func waitForCommit() throws(TransferError) {
        let machine = Mutex(handoverState)
        let replies = self.replies
        let deadline = Monotonic.now + options.timeout
        try onChannel0 { ch throws(TransferError) in
            while true {
                let f: ReceivedFrame
                do throws(TransferError) { f = try ch.receive(before: deadline, phase: "waiting for the source's commit") } catch {
                    throw TransferError(error.code, "waiting for the source to commit: \(error.message)",
                                        hint: error.hint, cause: error.cause)
                }
                let reaction = try machine.withLock { (m) throws(TransferError) -> Handover.Reaction in try m.received(f.header.type) }
                if reaction == .runDevices { return }
                if f.header.type == .ping { try replies.send(.pong, position: f.header.position) }
            }
        }
        handoverState = machine.withLock { $0 }
    }

    /// Each device's digest (nil where it cannot digest), recorded in the report with its bytes.
    private func digestLoaded() -> [UInt64?] {
        var digests: [UInt64?] = []
        for l in loaders {
            let d = try? l.device.digest()
            digests.append(d)
            report.devices[l.id].destinationDigest = d
            report.devices[l.id].bytes = l.loadedBytes
            emit(.deviceProgress(device: l.id, bytes: l.loadedBytes))
        }
        return digests
    }

    /// The source's summary: downtime as it measured it, and its digests, within the stall
    /// timeout overall (the source digests its devices first: a device so large that this takes
    /// longer leaves the summary missing here, nothing worse). Read without aborting. Its loss
    /// leaves the copy verified by chunk counts and checksums only, which a warning says along
    /// with what this end knows (the commit arrived; the devices run); digests that differ fail
    /// the migration here as at the source.
    func summary() throws(TransferError) {
        let received = Mutex<MigrationSummary?>(nil)
        let machine = Mutex(handoverState)
        let deadline = Monotonic.now + options.timeout
        try? onChannel0 { ch throws(TransferError) in
            guard let f = try? ch.receive(before: deadline, phase: "waiting for the source's summary"),
                  (try? machine.withLock { (m) throws(TransferError) in try m.received(f.header.type) }) == .compareDigests,
                  let s = try? MigrationSummary.decode(f.control) else { return }
            received.withLock { $0 = s }
        }
        report.wireBytes = wireBytes()
        guard let s = received.withLock({ $0 }) else {
            let running = loaders.allSatisfy { $0.device.state == .running }
            warn("warning: the source's summary did not arrive within \(options.timeout): the source's commit arrived and \(running ? "every device runs here" : "not every device runs here"), with every chunk verified; the whole-device digests were not compared here, and the downtime is the source's to report")
            return
        }
        report.downtime = s.downtime
        report.expectedDowntime = s.expectedDowntime
        report.downtimeLimit = s.downtimeLimit
        report.iterations = s.iterations
        report.precopyBytes = s.precopyBytes
        report.stopcopyBytes = s.stopcopyBytes
        for (i, d) in s.sourceDigests.enumerated() where i < report.devices.count { report.devices[i].sourceDigest = d }
        for d in report.devices {
            if let src = d.sourceDigest, let dst = d.destinationDigest, src != dst {
                throw TransferError(.corruption, "device \(d.id) (\(d.spec)): the state digest here \(Hex.digest(dst)) differs from the source's \(Hex.digest(src))")
            }
        }
    }

    private func wireBytes() -> UInt64 { group.wireBytes() + replies.sentBytes.load(ordering: .relaxed) }
}

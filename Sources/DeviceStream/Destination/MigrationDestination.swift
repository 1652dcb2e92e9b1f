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
    // waits in `run`) and read after it; `resumeHold` is set before `run`; the rest is
    // immutable or thread-safe (`control`, `progress`).
    /// Makes destination device `index` (in RESUMING) at load setup; `sourceSize` is the source
    /// device's state size for an addressable device (nil for a stream device). It comes from
    /// the peer: check it before allocating anything for it.
    public typealias DeviceFactory = @Sendable (_ index: Int, _ sourceSize: UInt64?) throws(DeviceError) -> any MigratableDevice

    /// The destination devices (made at load setup when the destination was given a factory).
    public private(set) var devices: [any MigratableDevice]
    private let factory: (count: Int, make: DeviceFactory)?
    package let listener: SessionListener
    /// Where this destination listens (with port 0 asked, the port it got).
    public var endpoint: Endpoint { listener.endpoint }
    public let options: TransferOptions
    /// Hold resume: when set, the devices wait in STOP after the source's `commit` until the
    /// caller calls `resume()`, at most this long (then the session fails with the devices
    /// stopped at both ends). Keep it well under the source's timeout, which waits for
    /// `resumed`. Set it before `run`.
    public var resumeHold: Duration?
    /// Live progress (device bytes loaded so far), readable from any thread.
    package let progress = TransferProgress()
    private let warn: @Sendable (String) -> Void
    private let control = SessionControl()

    /// Binds `endpoint` (port 0 picks one: `listener.endpoint`) and starts accepting.
    public convenience init(listen endpoint: Endpoint, devices: [any MigratableDevice], options: TransferOptions,
                            warn: (@Sendable (String) -> Void)? = nil) throws(TransferError) {
        try options.validate()
        try self.init(SessionListener(endpoint: endpoint, options: options, warn: warn ?? { printWarning($0) }), devices: devices, factory: nil,
                      options: options, warn: warn)
    }

    /// Like `init(listen:devices:options:)`, but the `deviceCount` devices are made by
    /// `makeDevice` at load setup, once the source's headers give their sizes (a file
    /// destination needs one).
    public convenience init(listen endpoint: Endpoint, deviceCount: Int, makeDevice: @escaping DeviceFactory, options: TransferOptions,
                            warn: (@Sendable (String) -> Void)? = nil) throws(TransferError) {
        try options.validate()
        try self.init(SessionListener(endpoint: endpoint, options: options, warn: warn ?? { printWarning($0) }), devices: [],
                      factory: (deviceCount, makeDevice), options: options, warn: warn)
    }

    /// A destination over sockets the caller already holds, one per channel of the source's
    /// session (`options.connections` is not used: the source's preamble says how many).
    /// Ownership: the session takes the descriptors and closes them when `run` returns (or
    /// here, if this throws). Without security options each must be a Unix socket whose
    /// peer runs as this user (SO_PEERCRED), unless `options.allowInsecure`.
    public convenience init(adopting sockets: [Int32], devices: [any MigratableDevice], options: TransferOptions,
                            warn: (@Sendable (String) -> Void)? = nil) throws(TransferError) {
        try self.init(SessionListener(adopting: sockets, options: options, warn: warn ?? { printWarning($0) }), devices: devices, factory: nil,
                      options: options, warn: warn)
    }

    private init(_ listener: SessionListener, devices: [any MigratableDevice], factory: (count: Int, make: DeviceFactory)?,
                 options: TransferOptions, warn: (@Sendable (String) -> Void)?) throws(TransferError) {
        self.devices = devices
        self.factory = factory
        self.options = options
        self.warn = warn ?? { printWarning($0) }
        self.listener = listener
        try listener.start()
    }

    /// A destination dropped without `run` (or whose `run` never came) stops its listener here:
    /// the listener's threads hold the listener, not this object, so nothing else would.
    deinit { listener.stop() }

    /// Closes the devices this destination made with its factory.
    public func closeDevices() { if factory != nil { for d in devices { d.close() } } }

    /// Cancels from any thread. Before the source's `commit` arrives the session fails with
    /// `.cancelled` and the devices never run (the source restarts its own). After it, it is
    /// too late: the devices run, and the report says the cancel came after the commit.
    /// - Returns: true when the cancel took effect.
    @discardableResult
    public func cancel() -> Bool {
        let took = control.cancel()
        if took { listener.fail(SessionControl.cancelError) }
        return took
    }

    /// With `resumeHold`: lets the devices run (STOP → RUNNING) once the source's commit is in.
    /// Any thread; calling it early lets them run as soon as the commit arrives.
    public func resume() { control.requestResume() }

    /// A snapshot of the session so far, from any thread.
    public var statistics: MigrationStatistics {
        var s = control.snapshot
        s.transferredBytes = progress.bytes
        if let start = s.startedAt, s.phase != .completed && s.phase != .failed { s.elapsed = Monotonic.now - start }
        return s
    }

    /// Receives one migration.
    /// - Parameters:
    ///   - acceptTimeout: how long to wait for the source's first connection (nil: forever).
    ///   - onEvent: called on library threads as the session moves; return quickly.
    /// - Warning: Blocks the calling thread until the migration completes or fails; run it on a
    ///   thread of your own, and `cancel()` from another.
    public func run(acceptTimeout: Duration? = nil, onEvent: @escaping @Sendable (MigrationEvent) -> Void = { _ in }) -> MigrationReport {
        var report = MigrationReport()
        report.protection = options.protection
        let start = Monotonic.now
        control.update { $0 = MigrationStatistics(); $0.startedAt = start; $0.phase = .idle }
        let abort = AbortSignal(side: "destination")
        control.attach(abort)
        let warn = self.warn
        let warnAndEmit: @Sendable (String) -> Void = { warn($0); onEvent(.warning($0)) }
        var sockets: [Connection] = []
        var run: DestinationRun?
        do throws(TransferError) {
            let (session, s) = try listener.waitForSession(timeout: acceptTimeout)
            sockets = s
            guard session.mode == .migration else {
                for c in s { abort.watch(c) }
                throw TransferError(.protocolViolation, "the sender started a plain transfer, but this receiver expects a migration")
            }
            if let e = abort.error { throw e }
            report.connections = session.channelCount
            report.compression = session.features.contains(.lz4)
            control.update { $0.phase = .setup }
            let r = try DestinationRun(session: session, sockets: s, options: options, abort: abort, warn: warnAndEmit,
                                       emit: onEvent, control: control, progress: progress, resumeHold: resumeHold, report: report)
            run = r
            try r.setup { (headers) throws(TransferError) in try self.makeLoaders(headers, channels: session.channelCount) }
            try r.load()
            try r.handover()
            try r.summary()
            report = r.report
            report.completed = true
        } catch {
            if let r = run { report = r.report }
            abort.abort(error)
            for l in run?.loaders ?? [] { l.wake() }
            let states = devices.map { $0.state == .running ? "\($0.spec) is RUNNING" : "\($0.spec) is not running (state \($0.state))" }
            report.error = TransferError(error.code, "\(error.message); on the destination \(states.joined(separator: ", "))",
                                         hint: error.hint, cause: error.cause)
        }
        run?.shutdown()
        listener.stop()
        for c in sockets { c.close() }
        report.cancelledAfterCommit = control.cancelledAfterCommit
        report.totalTime = Monotonic.now - start
        control.update { $0.phase = report.completed ? .completed : .failed; $0.elapsed = report.totalTime }
        return report
    }

    /// load_setup: the source's device headers matched to the local devices (made by the factory
    /// now, when the destination was given one), each with its loader.
    private func makeLoaders(_ headers: [DeviceHeader], channels n: Int) throws(TransferError) -> [DeviceLoader] {
        let have = factory?.count ?? devices.count
        guard headers.count == have else {
            throw TransferError(.usage, "the source migrates \(headers.count) device(s) but this destination has \(have)",
                                hint: "give the destination one device per source device, in the same order")
        }
        var list: [DeviceLoader] = []
        for (id, header) in headers.enumerated() {
            do throws(DeviceError) {
                let device: any MigratableDevice
                if let factory {
                    device = try factory.make(id, header.kind == .addressable ? header.size : nil)
                    devices.append(device)
                } else {
                    device = devices[id]
                }
                list.append(try DeviceLoader(id: id, device: device, header: header, channels: n))
            } catch {
                throw TransferError(.device, error.message, cause: error)
            }
        }
        return list
    }
}

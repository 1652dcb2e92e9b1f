import DSSupport
import DSTransport
import DSDevices

/// The source end of a live migration.
///
/// It runs the devices' save hooks over the data path in five phases (`SourceRun`): setup
/// (device headers; devices enter PRE_COPY), pre-copy rounds of dirty data spread over N
/// channels with the scheduler deciding after each, stop-copy (devices to STOP_COPY, the rest of
/// the state, config, end of state), the handover (the destination's `loaded`, the source's
/// `commit`, the destination's `resumed`) and the digest check. On any failure before `commit`
/// the source devices go back to RUNNING with their state intact; from `commit` on they stay
/// stopped (the destination may run them).
public final class MigrationSource: Sendable {
    public let devices: [any MigratableDevice]
    public let configuration: MigrationConfiguration
    /// Live progress (device bytes sent so far), readable from any thread (the public view is
    /// `statistics`).
    package let progress = TransferProgress()
    private let warn: @Sendable (String) -> Void
    private let control = SessionControl()

    /// - Parameters:
    ///   - devices: the devices to migrate; the session drives their migration states from
    ///     `migrate` until it returns (leave them alone meanwhile).
    ///   - warn: where warnings go (they also arrive as `.warning` events); the default prints
    ///     them on stderr.
    public init(devices: [any MigratableDevice], configuration: MigrationConfiguration,
                warn: (@Sendable (String) -> Void)? = nil) {
        self.devices = devices
        self.configuration = configuration
        self.warn = warn ?? { printWarning($0) }
    }

    /// Migrates every device to the destination listening at `endpoint`, dialing
    /// `configuration.transfer.connections` connections.
    ///
    /// - Warning: Blocks the calling thread until the migration completes or fails (seconds to
    ///   minutes); run it on a thread of your own. `onEvent` is called on library threads and
    ///   must return quickly.
    public func migrate(to endpoint: Endpoint, onEvent: @escaping @Sendable (MigrationEvent) -> Void = { _ in }) -> MigrationReport {
        run(.dial(endpoint), onEvent: onEvent)
    }

    /// Migrates over sockets the caller has already connected to the destination, one per
    /// channel (`configuration.transfer.connections` of them, channel 0 first).
    ///
    /// Ownership: the session takes the descriptors; it closes them when `migrate` returns,
    /// success or failure. Do not read, write or close them meanwhile or afterwards. Without
    /// `transfer.security` each socket must be a Unix socket whose peer runs as this user
    /// (SO_PEERCRED), unless `transfer.allowInsecure` is set.
    /// - Warning: Blocks like `migrate(to:onEvent:)`.
    public func migrate(over sockets: [Int32], onEvent: @escaping @Sendable (MigrationEvent) -> Void = { _ in }) -> MigrationReport {
        run(.adopt(sockets), onEvent: onEvent)
    }

    /// Cancels the migration, from any thread. Before `commit` the session fails with
    /// `.cancelled` and every source device runs again with its state intact (the destination
    /// never runs its own). From `commit` on it is too late: the handover completes, and the
    /// report says the cancel came after the commit (`cancelledAfterCommit`).
    /// - Returns: true when the cancel took effect.
    @discardableResult
    public func cancel() -> Bool { control.cancel() }

    /// With `configuration.scheduler.switchover == .external`: switch over now (after the VMM
    /// paused its vCPUs). The round in flight ends first. Any thread; calling it before
    /// `.readyToSwitchover` forces a switchover whatever the prediction says.
    public func switchover() { control.requestSwitchover() }

    /// Bytes the VMM will move itself during the downtime (its RAM): added to the prediction, so
    /// devices and RAM share one downtime budget. Any thread, any time.
    public var externalPendingBytes: UInt64 {
        get { control.externalPendingBytes }
        set { control.externalPendingBytes = newValue }
    }

    /// A snapshot of the migration so far, from any thread.
    public var statistics: MigrationStatistics {
        var s = control.snapshot
        s.transferredBytes = progress.bytes
        if let start = s.startedAt, s.phase != .completed && s.phase != .failed { s.elapsed = Monotonic.now - start }
        return s
    }

    private func run(_ transport: SourceRun.Transport, onEvent: @escaping @Sendable (MigrationEvent) -> Void) -> MigrationReport {
        let start = Monotonic.now
        control.update { $0 = MigrationStatistics(); $0.startedAt = start; $0.phase = .setup
            $0.downtimeLimit = configuration.downtimeLimit; $0.deviceBytes = Array(repeating: 0, count: devices.count) }
        var report = MigrationReport()
        report.downtimeLimit = configuration.downtimeLimit
        report.connections = configuration.transfer.connections
        report.compression = configuration.transfer.compression
        report.protection = configuration.transfer.protection
        report.devices = devices.enumerated().map { DeviceReport(id: $0.offset, spec: $0.element.spec, bytes: 0) }
        let savers = devices.enumerated().map { DeviceSaver(id: $0.offset, device: $0.element) }
        let warn = self.warn
        var run = SourceRun(savers: savers, configuration: configuration, report: report, progress: progress, control: control,
                            emit: onEvent, warn: { warn($0); onEvent(.warning($0)) }, start: start)
        do {
            try run.execute(transport)
            report = run.report
            report.completed = true
        } catch {
            run.abort.abort(error)
            run.shutdown()
            report = run.report
            report.error = run.committed ? Self.committedFailure(error, report: report, savers: savers)
                                         : Self.restartAfterFailure(error, savers: savers)
        }
        run.shutdown()
        report.cancelledAfterCommit = control.cancelledAfterCommit
        report.totalTime = Monotonic.now - start
        control.update { $0.phase = report.completed ? .completed : .failed; $0.elapsed = report.totalTime }
        return report
    }

    /// A failure after `commit` may have reached the destination, which then runs the devices:
    /// restarting them here could run the same device twice. The source stays stopped.
    private static func committedFailure(_ error: TransferError, report: MigrationReport, savers: [DeviceSaver]) -> TransferError {
        let states = savers.map { "\($0.device.spec) stays \($0.device.state) on the source" }
        let context = report.downtime != nil
            ? "after the handover (the devices are RUNNING on the destination)"
            : "after the source committed the handover, before the destination confirmed its devices RUNNING (check the destination before restarting anything)"
        return TransferError(error.code, "\(context): \(error.message); \(states.joined(separator: ", "))", hint: error.hint, cause: error.cause)
    }

    /// A failure before `commit`: every source device runs again, with its state intact.
    private static func restartAfterFailure(_ error: TransferError, savers: [DeviceSaver]) -> TransferError {
        var states: [String] = []
        for s in savers {
            do throws(DeviceError) { try s.cleanup(success: false) } catch {
                states.append("\(s.device.spec) could not be restarted: \(error)")
                continue
            }
            states.append("\(s.device.spec) is \(s.device.state) again on the source")
        }
        return TransferError(error.code, "\(error.message); \(states.joined(separator: ", "))", hint: error.hint, cause: error.cause)
    }
}

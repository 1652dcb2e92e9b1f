import DSSupport
import DSTransport
import DSDevices

/// Progress events a source emits while it migrates.
public enum MigrationEvent: Sendable {
    case setupDone(Duration)
    case iteration(IterationReport)
    case switchover(predicted: Duration?, reason: String)
}

/// The source end of a live migration.
///
/// It runs the devices' save hooks over the data path in five phases (`SourceRun`): setup
/// (device headers; devices enter PRE_COPY), pre-copy rounds of dirty data spread over N
/// channels with the scheduler deciding after each, stop-copy (devices to STOP_COPY, the rest of
/// the state, config, end of state), the handover (the destination's `loaded`, the source's
/// `commit`, the destination's `resumed`) and the digest check. On any failure before `commit`
/// the source devices go back to RUNNING with their state intact; from `commit` on they stay
/// stopped (the destination may run them).
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
        var run = SourceRun(savers: savers, configuration: configuration, report: report, progress: progress,
                            phaseHook: phaseHook, warn: warn, start: start)
        do {
            try run.execute(endpoint: endpoint, onEvent: onEvent)
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
        report.totalTime = Monotonic.now - start
        return report
    }

    /// A failure after `commit` may have reached the destination, which then runs the devices:
    /// restarting them here could run the same device twice. The source stays stopped.
    private static func committedFailure(_ error: TransferError, report: MigrationReport, savers: [DeviceSaver]) -> TransferError {
        let states = savers.map { "\($0.device.spec) stays \($0.device.state) on the source" }
        let context = report.downtime != nil
            ? "after the handover (the devices are RUNNING on the destination)"
            : "after the source committed the handover, before the destination confirmed its devices RUNNING (check the destination before restarting anything)"
        return TransferError(error.code, "\(context): \(error.message); \(states.joined(separator: ", "))")
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
        return TransferError(error.code, "\(error.message); \(states.joined(separator: ", "))")
    }
}

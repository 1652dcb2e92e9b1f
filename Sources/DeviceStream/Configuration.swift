import DSTransport
import DSScheduler

/// How a migration runs: the data path and the pre-copy scheduler, each configured once.
public struct MigrationConfiguration: Sendable {
    /// The data path: connections, compression, chunk size, stall timeout.
    public var transfer = TransferOptions()
    /// The pre-copy scheduler: downtime budget, bandwidth cap, policy, deadline, probe rounds.
    /// Its defaults are the product's defaults (stated once, in `SchedulerConfiguration`).
    public var scheduler = SchedulerConfiguration()
    /// Switchover phase timings as warnings (a debugging aid; the CLI sets it from
    /// `DEVSTREAM_TRACE`: the library reads no environment).
    public var trace = false
    public init() {}

    /// The downtime budget switchover must fit.
    public var downtimeLimit: Duration { scheduler.downtimeLimit }
}

/// The steps of the two-phase handover, in order, as each end passes them.
public enum HandoverPhase: String, Sendable, CaseIterable {
    /// Source: the rest of the state, config and channel ends are sent.
    case stateSent = "state-sent"
    /// Destination: every device is loaded, validated and in STOP; `loaded` is sent.
    case loadedSent = "loaded-sent"
    /// Source: the destination's `loaded` arrived (the source devices are still restartable).
    case loadedReceived = "loaded-received"
    /// Source: `commit` is sent; the source devices will not run again.
    case commitSent = "commit-sent"
    /// Destination: `commit` arrived; the devices are about to run.
    case commitReceived = "commit-received"
    /// Destination: every device is RUNNING and `resumed` is sent.
    case running = "running"
    /// Source: `resumed` arrived; the downtime is measured.
    case resumedReceived = "resumed-received"
}

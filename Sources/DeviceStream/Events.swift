import DSScheduler

/// What a session reports while it runs, at both ends, in order. Handlers are called on
/// library threads (the one running `migrate` or `run`, and for warnings any session thread):
/// they must return quickly and must not call back into the session's blocking calls.
public enum MigrationEvent: Sendable {
    /// Both ends: setup is done (devices in PRE_COPY / RESUMING, headers exchanged).
    case setupDone(Duration)
    /// Source: a pre-copy round ended.
    case iteration(IterationReport)
    /// Destination: round `round` is loaded on every channel, `loadedBytes` in all so far.
    case roundLoaded(round: Int, loadedBytes: UInt64)
    /// Source, with external switchover: the scheduler would switch over now (its prediction
    /// fits, or its policy says so). Rounds go on until the caller calls `switchover()`.
    case readyToSwitchover(predicted: Duration?, reason: SwitchoverReason)
    /// Source: switchover starts now; the devices stop next.
    case switchover(predicted: Duration?, reason: SwitchoverReason)
    /// Both ends: a step of the two-phase handover.
    case handover(HandoverPhase)
    /// Both ends: a device's bytes so far (after each round and at the end).
    case deviceProgress(device: Int, bytes: UInt64)
    /// Both ends: something worth a person's attention that did not fail the session.
    case warning(String)
}

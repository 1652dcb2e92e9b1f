import DSSupport
import DSTransport

/// The VMM's hold on a running session, shared by the caller's thread (cancel, switchover,
/// resume, statistics) and the session's own (which checks and waits on it).
///
/// Cancel and commit meet here under one lock, so exactly one wins: a cancel before the commit
/// point aborts the session (the source restarts its devices; the destination never runs its
/// own); a cancel after it is recorded and reported, never acted on.
final class SessionControl: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`.
    private let lock = ConditionLock()
    private var abort: AbortSignal?
    private var cancelled = false
    private var committed = false
    private var lateCancel = false
    private var switchoverRequested = false
    private var resumeRequested = false
    private var externalBytes: UInt64 = 0
    private var statistics = MigrationStatistics()

    /// The session's abort signal: a cancel that came before the session started aborts it now.
    func attach(_ signal: AbortSignal) {
        let early = lock.withLock { () -> Bool in
            abort = signal
            return cancelled && !committed
        }
        if early { signal.abort(Self.cancelError) }
    }

    static let cancelError = TransferError(.cancelled, "the migration was cancelled by the caller")

    /// Cancels before the commit point; after it, only records that a cancel came too late.
    /// - Returns: true when the cancel took effect.
    @discardableResult
    func cancel() -> Bool {
        let target = lock.withLock { () -> AbortSignal?? in
            cancelled = true
            lock.broadcast()
            if committed { lateCancel = true; return .none }
            return .some(abort)
        }
        guard case .some(let signal) = target else { return false }
        signal?.abort(Self.cancelError)
        return true
    }

    /// The commit point: false (and the session must stop) when a cancel came first.
    func commit() -> Bool {
        lock.withLock {
            guard !cancelled else { return false }
            committed = true
            return true
        }
    }

    var isCommitted: Bool { lock.withLock { committed } }
    var cancelledAfterCommit: Bool { lock.withLock { lateCancel } }

    func requestSwitchover() { lock.withLock { switchoverRequested = true; lock.broadcast() } }
    var isSwitchoverRequested: Bool { lock.withLock { switchoverRequested } }

    /// Blocks until the caller switches over, cancels, or the session aborts.
    func waitForSwitchover(abort signal: AbortSignal) throws(TransferError) {
        // The waker holds the lock only: the signal keeps its wakers, and `self` holds the
        // signal (`attach`), so capturing `self` made a cycle that leaked both, and everything
        // the signal watches, after every session that waited here (LeakSanitizer found it).
        signal.onAbort { [lock] in lock.withLock { lock.broadcast() } }
        lock.withLock { _ = lock.wait(until: { switchoverRequested || cancelled || signal.isAborted }, timeout: nil) }
        if let e = signal.error { throw e }
        if lock.withLock({ cancelled }) { throw Self.cancelError }
    }

    func requestResume() { lock.withLock { resumeRequested = true; lock.broadcast() } }

    /// Blocks until the caller resumes (true), or `timeout` passes or the session aborts (false).
    func waitForResume(timeout: Duration, abort signal: AbortSignal) -> Bool {
        signal.onAbort { [lock] in lock.withLock { lock.broadcast() } }  // not `self`: see above
        return lock.withLock {
            lock.wait(until: { resumeRequested || signal.isAborted }, timeout: timeout) && resumeRequested && !signal.isAborted
        }
    }

    /// Bytes the VMM itself will move during the downtime (its RAM), added to the prediction.
    var externalPendingBytes: UInt64 {
        get { lock.withLock { externalBytes } }
        set { lock.withLock { externalBytes = newValue } }
    }

    func update(_ body: (inout MigrationStatistics) -> Void) { lock.withLock { body(&statistics) } }
    var snapshot: MigrationStatistics { lock.withLock { statistics } }
}

/// Where a session stands.
public enum MigrationPhase: String, Sendable, CaseIterable {
    /// Not started yet (or waiting for the source to connect, at a destination).
    case idle
    /// Connecting, device headers, devices into PRE_COPY / RESUMING.
    case setup
    /// Pre-copy rounds while the devices run.
    case precopy
    /// External switchover: the prediction fits; waiting for the caller's `switchover()`.
    case readyToSwitchover
    /// The devices are stopped; the rest of the state moves (the downtime runs).
    case stopCopy
    /// The two-phase handover (`loaded`, `commit`, `resumed`).
    case handover
    /// Comparing digests and closing.
    case verifying
    case completed
    case failed
}

/// A live snapshot of a session, readable at any time from any thread (`statistics`). Names
/// follow QEMU's `query-migrate` where it has one.
public struct MigrationStatistics: Sendable {
    public var phase: MigrationPhase = .idle
    /// When the session started (`Monotonic` clock), nil before.
    public var startedAt: Duration?
    /// Since the session started.
    public var elapsed: Duration = .zero
    public var setupTime: Duration?
    /// Device bytes sent (source) or loaded (destination) so far.
    public var transferredBytes: UInt64 = 0
    /// Bytes left to send as of the last round (dirty + stop-copy-only), source only.
    public var remainingBytes: UInt64?
    public var iterations = 0
    /// The scheduler's effective bandwidth (device bytes/s), source only.
    public var bandwidth: Double?
    /// The scheduler's latest prediction of the downtime, source only.
    public var expectedDowntime: Duration?
    public var downtimeLimit: Duration?
    /// Measured, once the handover has ended it.
    public var downtime: Duration?
    /// Per device: bytes sent or loaded so far.
    public var deviceBytes: [UInt64] = []
    public init() {}
}

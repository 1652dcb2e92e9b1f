import Synchronization
import DSSupport
import DSTransport

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

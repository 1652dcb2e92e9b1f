import DSWire
import DSSupport

/// Sends a `keepalive` frame on each registered connection that has been idle for `interval`,
/// so a sender whose input pauses is not taken for a stalled peer by the receiver's timeout.
///
/// One thread for all connections. A keepalive goes out only when the connection's `SendTurn`
/// is idle (never inside a frame, never concurrently with the channel's thread), through the
/// connection's funnel in `.ifRoom` mode: only when the socket has room for it at once (a full
/// socket buffer means the receiver has data to read anyway).
package final class KeepalivePacer: @unchecked Sendable {
    // @unchecked: `entries` and `stopped` are guarded by `lock`; the thread is joined in `stop`.
    private let lock = ConditionLock()
    private var entries: [Connection] = []
    private var stopped = false
    private var thread: OSThread?
    private let interval: Duration
    private let abort: AbortSignal
    private static let frame = controlFrame(.keepalive)
    /// The bytes of one keepalive frame (a header, no payload).
    package static let frameSize = UInt64(FrameHeader.size)

    /// The idle time after which a channel sends a keepalive: 250 ms, or a quarter of `timeout`
    /// if that is less (well under any receiver's stall timeout of a second or more).
    package static func interval(timeout: Duration) -> Duration { min(.milliseconds(250), timeout / 4) }

    /// Starts the pacing thread, `ds-keepalive`.
    /// - Throws: `.localIO` when the thread cannot be started.
    package init(interval: Duration, abort: AbortSignal) throws(TransferError) {
        self.interval = interval
        self.abort = abort
        do { thread = try OSThread(name: "ds-keepalive") { [self] in run() } } catch {
            throw .threadStart(error, "ds-keepalive", doing: "keepalives while the input pauses")
        }
    }

    deinit { stop() }

    /// Starts pacing `connection` (a channel's); its sends take `connection.sendTurn`.
    package func add(_ connection: Connection) {
        lock.withLock { entries.append(connection) }
    }

    /// Stops and joins the thread. Idempotent.
    package func stop() {
        let t = lock.withLock { () -> OSThread? in
            stopped = true
            lock.broadcast()
            defer { thread = nil }
            return thread
        }
        t?.join()
    }

    private func run() {
        let idle = UInt64(interval.seconds * 1e9)
        while true {
            let list = lock.withLock { () -> [Connection]? in
                _ = lock.wait(until: { stopped }, timeout: interval / 2)
                return stopped ? nil : entries
            }
            guard let list else { return }
            if abort.isAborted { continue }
            for c in list where c.sendTurn.tryBeginKeepalive(idleNanos: idle) {
                let torn = !Self.send(on: c)
                c.sendTurn.endKeepalive()
                if torn {
                    abort.abort(TransferError(.peerClosed, "sending a keepalive failed: the stream to the receiver is broken"))
                    break
                }
            }
        }
    }

    /// Sends the 40-byte frame on `c` if its socket has room now; a partial send is finished
    /// within 1 s. Returns false only when the frame went out in part and could not be
    /// finished (the stream is torn). A send that fails before any byte went out is left for the
    /// channel's own next send or receive to report, with the peer's reason if it left one.
    static func send(on c: Connection) -> Bool {
        do {
            if try c.send(frame, timeout: .seconds(1), mode: .ifRoom) { c.countKeepalive() }
        } catch {
            return !c.socketGuard.midFrame
        }
        return true
    }
}

import Glibc
import Synchronization
import DSWire
import DSSupport

/// Who sends on one socket right now: the channel's own thread (a frame) or the keepalive
/// pacer, never both, so a keepalive never lands inside a frame.
public final class SendTurn: Sendable {
    private static let idle = 0, channel = 1, pacer = 2, retired = 3
    private let state = Atomic<Int>(0)
    /// CLOCK_MONOTONIC nanoseconds of the end of the last send on the socket.
    private let lastSend = Atomic<UInt64>(Monotonic.nanoseconds)
    public init() {}

    /// The channel's thread takes the socket for one frame (waits out a keepalive in flight:
    /// 40 bytes, non-blocking, so microseconds).
    func beginChannelSend() {
        while true {
            let s = state.load(ordering: .acquiring)
            if s == Self.retired || s == Self.channel { return }
            if s == Self.idle, state.compareExchange(expected: Self.idle, desired: Self.channel, ordering: .acquiring).exchanged { return }
            sched_yield()
        }
    }

    func endChannelSend() {
        lastSend.store(Monotonic.nanoseconds, ordering: .relaxed)
        _ = state.compareExchange(expected: Self.channel, desired: Self.idle, ordering: .releasing)
    }

    /// No keepalive after this (the channel sent its last data frame and its end).
    public func retire() {
        while true {
            let s = state.load(ordering: .acquiring)
            if s == Self.retired { return }
            if s != Self.pacer, state.compareExchange(expected: s, desired: Self.retired, ordering: .acquiringAndReleasing).exchanged { return }
            sched_yield()
        }
    }

    /// The pacer takes the socket if the channel is idle and has sent nothing for `idleNanos`.
    func tryBeginKeepalive(idleNanos: UInt64) -> Bool {
        guard Monotonic.nanoseconds &- lastSend.load(ordering: .relaxed) >= idleNanos else { return false }
        return state.compareExchange(expected: Self.idle, desired: Self.pacer, ordering: .acquiring).exchanged
    }

    func endKeepalive() {
        lastSend.store(Monotonic.nanoseconds, ordering: .relaxed)
        state.store(Self.idle, ordering: .releasing)
    }
}

/// Sends a `keepalive` frame on each registered channel that has been idle for `interval`, so a
/// sender whose input pauses is not taken for a stalled peer by the receiver's timeout.
///
/// One thread for all channels. A keepalive goes out only when the channel's `SendTurn` is
/// idle (never inside a frame, never concurrently with the channel's thread), with a
/// non-blocking send: a full socket buffer means the receiver has data to read anyway.
public final class KeepalivePacer: @unchecked Sendable {
    // @unchecked: `entries` and `stopped` are guarded by `lock`; the thread is joined in `stop`.
    private let lock = ConditionLock()
    private var entries: [(fd: Int32, turn: SendTurn, guard: SocketGuard?)] = []
    private var stopped = false
    private var thread: OSThread?
    private let interval: Duration
    private let abort: AbortSignal
    private static let frame = controlFrame(.keepalive)

    /// The idle time after which a channel sends a keepalive: 250 ms, or a quarter of `timeout`
    /// if that is less (well under any receiver's stall timeout of a second or more).
    public static func interval(timeout: Duration) -> Duration { min(.milliseconds(250), timeout / 4) }

    public init(interval: Duration, abort: AbortSignal) {
        self.interval = interval
        self.abort = abort
        thread = OSThread { [self] in run() }
    }

    deinit { stop() }

    /// Starts pacing the socket `fd` (a channel's); returns the turn its sends must take.
    public func add(fd: Int32, guard g: SocketGuard?) -> SendTurn {
        let turn = SendTurn()
        lock.withLock { entries.append((fd, turn, g)) }
        return turn
    }

    /// Stops and joins the thread. Idempotent.
    public func stop() {
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
            let list = lock.withLock { () -> [(fd: Int32, turn: SendTurn, guard: SocketGuard?)]? in
                _ = lock.wait(until: { stopped }, timeout: interval / 2)
                return stopped ? nil : entries
            }
            guard let list else { return }
            if abort.isAborted { continue }
            for e in list where e.turn.tryBeginKeepalive(idleNanos: idle) {
                if e.guard?.midFrame == true { e.turn.endKeepalive(); continue }
                // Marked mid-frame while it goes out, so an abort's farewell is not spliced in.
                e.guard?.setMidFrame(true)
                let sent = send(e.fd)
                e.guard?.setMidFrame(false)
                if !sent {
                    e.turn.endKeepalive()
                    abort.abort(TransferError(.peerClosed, "sending a keepalive failed: the stream to the receiver is broken"))
                    break
                }
                e.turn.endKeepalive()
            }
        }
    }

    /// Sends the 40-byte frame without blocking; finishes a partial send (bounded by 1 s).
    /// Returns false only if the frame went out in part and could not be finished.
    private func send(_ fd: Int32) -> Bool {
        if let secure = SecureStream.forSocket(fd) {
            // TLS: the frame goes out as one record through the stream (whose bytes must never
            // be dropped half-sent). Only when the socket has room for it, so this never blocks:
            // a full buffer means the receiver has data to read anyway.
            guard Self.hasRoom(fd, for: 256) else { return true }
            // A failure is left for the channel's own next send or receive to report (with the
            // peer's reason, if it left one), as on a plaintext socket.
            Self.frame.withUnsafeBytes { b in
                do throws(SecureStream.Failure) { try secure.sendAll(b, ring: nil, timeout: .seconds(1)) } catch {}
            }
            return true
        }
        var sent = 0
        let deadline = Monotonic.now + .seconds(1)
        while sent < Self.frame.count {
            let n = Self.frame.withUnsafeBytes { b in
                Glibc.send(fd, b.baseAddress! + sent, b.count - sent, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            }
            if n > 0 { sent += n; continue }
            let e = errno
            if n < 0 && (e == EAGAIN || e == EWOULDBLOCK || e == EINTR) {
                if sent == 0 { return true }  // the buffer is full: the receiver has data to read
                if Monotonic.now >= deadline { return false }
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, 50)
                continue
            }
            // A dead socket: the channel's own next send or receive reports it.
            return sent == 0
        }
        return true
    }

    /// Whether `fd`'s send buffer has at least `bytes` free (SO_SNDBUF less what is queued).
    static func hasRoom(_ fd: Int32, for bytes: Int) -> Bool {
        var size: Int32 = 0, queued: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, &len) == 0, ioctl(fd, UInt(TIOCOUTQ), &queued) == 0 else { return false }
        return Int(size) - Int(queued) >= bytes
    }
}

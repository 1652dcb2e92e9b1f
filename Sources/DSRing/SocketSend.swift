internal import CURing
import Glibc
import Synchronization
import DSSupport

/// A fault plan that several threads may consult (the senders of one connection): `injector`
/// is called under a lock, one send at a time, so it may keep state of its own.
package final class FaultPlan: @unchecked Sendable {
    // @unchecked: `injector`, and whatever it captures, is only called under `lock`.
    private let lock = Mutex(())
    private let injector: FaultInjector
    package init(_ injector: @escaping FaultInjector) { self.injector = injector }

    /// The fault for one operation of `kind` over `count` bytes.
    package func fault(for kind: IOOpKind, count: Int) -> InjectedFault {
        lock.withLock { _ in injector(kind, count) }
    }
}

/// The one send-within-a-deadline loop on a socket. Every send of a frame, a control reply, a
/// keepalive, a farewell or a TLS flight ends here, so faults can be injected into all of them.
package enum SocketSend {
    /// What a send did.
    package struct Outcome: Sendable {
        /// Bytes that reached the socket.
        package var sent: Int
        /// Why it stopped short; nil when everything went out. `.timedOut`: the peer left the
        /// socket full for the whole timeout.
        package var error: Errno?
    }

    /// Sends all of `bytes` on the socket `fd`, resuming short sends.
    ///
    /// EINTR is retried here. EAGAIN waits for POLLOUT until the deadline, which is `timeout`
    /// after the last byte went out: a stall timeout, so a long frame that keeps moving is never
    /// cut off, and a peer that stops reading fails the send instead of holding it forever.
    /// A peer that takes no byte (`send` returning 0) is a reset.
    ///
    /// - Parameters:
    ///   - timeout: how long the peer may leave the socket full; nil: no limit; `.zero`: never
    ///     wait (what the socket does not take at once stays unsent: `.timedOut`).
    ///   - ring: the calling thread's ring: each piece is an `IORING_OP_SEND` through
    ///     `Ring.perform` (the ring's own fault injector applies, and the ring waits for room
    ///     itself). nil: non-blocking `send(2)` on this thread.
    ///   - faults: a fault plan for these sends, consulted before each piece as `Ring.submit`
    ///     consults the ring's (`.fail(EINTR)`, `.fail(EAGAIN)`, `.short(n)`, `.fail(ECONNRESET)`
    ///     are then handled exactly like the real thing).
    package static func sendAll(fd: Int32, _ bytes: UnsafeRawBufferPointer, timeout: Duration?, ring: Ring? = nil,
                               faults: FaultPlan? = nil) -> Outcome {
        var done = 0
        var deadline = timeout.map { Monotonic.now + $0 }
        while done < bytes.count {
            var piece = UnsafeRawBufferPointer(rebasing: bytes[done...])
            var failure: Errno?
            switch faults?.fault(for: .send, count: piece.count) ?? .none {
            case .none: break
            case .short(let n): piece = UnsafeRawBufferPointer(rebasing: piece[0..<min(max(1, n), piece.count)])
            case .fail(let e): failure = e
            }
            var n = -1
            if failure == nil {
                if let ring {
                    let left = deadline.map { $0 - Monotonic.now }
                    if let left, left <= .zero { return Outcome(sent: done, error: .timedOut) }
                    do { n = try ring.perform(.send(fd: fd, buffer: piece), timeout: left) } catch { failure = error }
                } else {
                    n = Glibc.send(fd, piece.baseAddress, piece.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                    if n < 0 { failure = .current }
                }
            }
            if n > 0 {
                done += n
                deadline = timeout.map { Monotonic.now + $0 }
                continue
            }
            guard let failure else { return Outcome(sent: done, error: .connectionReset) }
            switch failure {
            case .interrupted:
                continue
            case .wouldBlock:
                guard waitWritable(fd, until: deadline) else { return Outcome(sent: done, error: .timedOut) }
            default:
                return Outcome(sent: done, error: failure)
            }
        }
        return Outcome(sent: done, error: nil)
    }

    /// Waits until `fd` can take bytes (or is in error: the next send says which), up to
    /// `deadline` (nil: no limit). Returns false when the deadline passed first.
    private static func waitWritable(_ fd: Int32, until deadline: Duration?) -> Bool {
        while true {
            var ms: Int32 = -1
            if let deadline {
                let left = deadline - Monotonic.now
                guard left > .zero else { return false }
                ms = Int32(min(max(left.milliseconds.rounded(.up), 1), 60_000))
            }
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let rc = poll(&p, 1, ms)
            if rc > 0 { return true }
            if rc < 0 && errno != EINTR { return true }
        }
    }
}

import Glibc

/// A mutex with a condition variable (pthread). Used off the per-chunk fast path: round
/// barriers, the ordered writer's turn-taking, session joins.
public final class ConditionLock: @unchecked Sendable {
    // @unchecked: the pthread objects are heap-allocated once, never moved, and only touched
    // through pthread calls, which are thread-safe by contract.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond); pthread_mutex_destroy(mutex)
        cond.deallocate(); mutex.deallocate()
    }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits (the lock held) until `predicate` is true or `timeout` passes; returns the
    /// predicate's last value. Call inside `withLock`.
    public func wait(until predicate: () -> Bool, timeout: Duration?) -> Bool {
        let deadline = timeout.map { Monotonic.now + $0 }
        while !predicate() {
            if let deadline {
                let now = Monotonic.now
                if now >= deadline { return predicate() }
                var ts = Monotonic.timespecAt(deadline)
                pthread_cond_timedwait(cond, mutex, &ts)
            } else {
                pthread_cond_wait(cond, mutex)
            }
        }
        return true
    }

    public func broadcast() { pthread_cond_broadcast(cond) }
}

/// CLOCK_MONOTONIC as a Duration since boot.
public enum Monotonic {
    public static var now: Duration {
        var ts = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return .seconds(ts.tv_sec) + .nanoseconds(ts.tv_nsec)
    }
    static func timespecAt(_ d: Duration) -> Glibc.timespec {
        let (s, atto) = d.components
        return Glibc.timespec(tv_sec: Int(s), tv_nsec: Int(atto / 1_000_000_000))
    }
    /// Nanoseconds since boot, for the scheduler's `Instant`.
    public static var nanoseconds: UInt64 {
        var ts = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

extension Duration {
    public var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
    public var milliseconds: Double { seconds * 1000 }
}

/// A joinable OS thread. Rings live on these: a request dies with its submitting thread, so
/// they are never run on the cooperative pool.
public final class OSThread: @unchecked Sendable {
    // @unchecked: `tid` is written once by pthread_create before any other access; `body` is
    // immutable.
    private var tid = pthread_t()
    private let body: () -> Void

    public init(_ body: @escaping () -> Void) {
        self.body = body
        let ctx = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&tid, nil, { p in
            let me = Unmanaged<OSThread>.fromOpaque(p!).takeRetainedValue()
            me.body()
            return nil
        }, ctx)
        precondition(rc == 0, "pthread_create failed: \(rc)")
    }

    public func join() { pthread_join(tid, nil) }
}

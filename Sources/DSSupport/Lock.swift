import Glibc

/// A mutex with a condition variable (pthread). Used off the per-chunk fast path: round
/// barriers, the ordered writer's turn-taking, session joins.
package final class ConditionLock: @unchecked Sendable {
    // @unchecked: the pthread objects are heap-allocated once, never moved, and only touched
    // through pthread calls, which are thread-safe by contract.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    package init() {
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

    package func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Runs `body` under the lock if the lock is free now; nil (without running it) when another
    /// thread holds it. For best-effort work that must never wait (an abort's farewell).
    package func withLockIfAvailable<T>(_ body: () throws -> T) rethrows -> T? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits (the lock held) until `predicate` is true or `timeout` passes; returns the
    /// predicate's last value. Call inside `withLock`.
    package func wait(until predicate: () -> Bool, timeout: Duration?) -> Bool {
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

    package func broadcast() { pthread_cond_broadcast(cond) }
}

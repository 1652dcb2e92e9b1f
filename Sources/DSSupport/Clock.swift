import Glibc

/// CLOCK_MONOTONIC as a Duration since boot.
package enum Monotonic {
    package static var now: Duration {
        var ts = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return .seconds(ts.tv_sec) + .nanoseconds(ts.tv_nsec)
    }
    package static func timespecAt(_ d: Duration) -> Glibc.timespec {
        let (s, atto) = d.components
        return Glibc.timespec(tv_sec: Int(s), tv_nsec: Int(atto / 1_000_000_000))
    }
    /// Nanoseconds since boot, for the scheduler's `Instant`.
    package static var nanoseconds: UInt64 {
        var ts = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

extension Duration {
    package var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
    package var milliseconds: Double { seconds * 1000 }
}

/// Sleeps the calling thread for `d` (nanosleep, resumed after a signal).
package func sleep(for d: Duration) {
    guard d > .zero else { return }
    var ts = Monotonic.timespecAt(d)
    var rest = Glibc.timespec()
    while nanosleep(&ts, &rest) != 0 && errno == EINTR { ts = rest }
}

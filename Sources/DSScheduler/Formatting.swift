// MARK: - Internal utilities

extension Duration {
    var dsSeconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }

    /// Whole nanoseconds, saturating at Int64's range.
    var dsNanoseconds: Int64 {
        let c = components
        let (m, o) = c.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if o { return c.seconds < 0 ? .min : .max }
        let (s, o2) = m.addingReportingOverflow(c.attoseconds / 1_000_000_000)
        if o2 { return c.seconds < 0 ? .min : .max }
        return s
    }
}

/// Seconds -> Duration, rounded to the nanosecond, saturating.
func durationFromSeconds(_ seconds: Double) -> Duration {
    guard seconds.isFinite else { return seconds > 0 ? .nanoseconds(Int64.max) : .zero }
    let ns = (seconds * 1e9).rounded()
    if ns >= 9.2e18 { return .nanoseconds(Int64.max) }
    if ns <= -9.2e18 { return .nanoseconds(Int64.min) }
    return .nanoseconds(Int64(ns))
}

/// One decimal place, without Foundation.
func formatFixed1(_ value: Double) -> String {
    guard value.isFinite else { return value.isNaN ? "nan" : (value > 0 ? "inf" : "-inf") }
    let scaled = (value * 10).rounded()
    guard scaled.magnitude < 9e18 else { return "\(value)" }
    let q = Int64(scaled)
    return "\(q < 0 ? "-" : "")\(q.magnitude / 10).\(q.magnitude % 10)"
}

/// "312.5 ms".
func formatDuration(_ d: Duration) -> String {
    "\(formatFixed1(d.dsSeconds * 1000)) ms"
}

/// "95.4 MiB/s", or "unknown".
func formatRate(_ bytesPerSecond: Double?) -> String {
    guard let r = bytesPerSecond else { return "unknown" }
    return "\(formatFixed1(r / 1_048_576)) MiB/s"
}

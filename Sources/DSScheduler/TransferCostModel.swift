/// # The stop-copy transfer model
///
/// How long moving the remaining dirty state takes, from what the pre-copy rounds measured.
///
/// A bytes-over-bandwidth estimate fails on a CPU-bound path (loopback, a 10 Gbit/s link on a
/// small machine), because a round's device-byte rate is not a property of the link there:
/// - Scattered dirty pages travel as extents (`pages` frames), and each extent costs a read at
///   the source and a scattered write at the destination whatever its length. A round of dense
///   runs moves 1.3 GB/s on this 2-core VM; one of isolated 4 KiB pages a third of that. Rounds
///   shrink as pre-copy converges and the pages left get sparser, so each round's rate
///   overstates the next, and stop-copy, the sparsest of all, is under-predicted.
/// - Compression and checksums cost CPU per device byte and depend on how compressible the
///   pages are; the wire only carries what compression left.
///
/// So the model keeps two clocks apart:
/// - **CPU time** = `perExtent × extents + perByte × sentBytes`. Both coefficients are fitted by
///   least squares over the samples (the bulk round, which has few extents and pins the per-byte
///   cost, plus the latest `window` rounds at full speed), with relative weights (1/duration²)
///   so a 20 ms round counts as much as a 600 ms one. On a CPU-bound path a round's wall time is
///   its CPU time; on a link-bound one the fit absorbs the wire too, and the wire term decides.
/// - **Wire time** = `wireBytes / wireRate`, where the remaining wire bytes are the remaining
///   device bytes times the latest round's wire/sent ratio (the dirty pages' compressibility: the
///   stop-copy sends the same kind of pages), and `wireRate` is the fastest wire-byte rate a
///   sample reached (what the link has shown it carries).
///
/// The fit's shape (what extents cost against bytes) is stable, but on a shared machine the
/// share of the CPU the migration gets drifts from round to round, and a fit over several
/// rounds averages that away. So the CPU time is scaled by how the latest round compared with
/// the fit (its duration over the fit's time for it, `loadFactor`, held to 0.5...2 so one
/// outlier cannot dominate): the latest conditions, at the shape of the remaining pages.
/// (Replayed offline on the rounds of 24 converged sweep runs, loopback and 10 Gbit/s, on a
/// busy 2-core VM, that cut the median |measured − predicted| from 5.1% to 3.4% of the limit;
/// the worst runs, whose stop-copy ran slower than every round before it, it cannot help.)
///
/// The stages are pipelined across connections, so the transfer takes the longer of the two:
/// `max(CPU time, wire time)`. If the fit is degenerate (a single sample, or a negative
/// coefficient), it falls back to the per-byte cost alone (`perExtent = 0`), which is the plain
/// bandwidth estimate. The model does no I/O and reads no clock: it is fed figures and returns
/// durations, so tests check its arithmetic with given inputs.
package struct TransferCostModel: Equatable, Sendable {
    /// One round's figures: extents sent, device bytes, wire bytes and how long it took.
    package struct Sample: Equatable, Sendable {
        package var extents: UInt64
        package var sentBytes: UInt64
        package var wireBytes: UInt64
        package var duration: Duration

        package init(extents: UInt64, sentBytes: UInt64, wireBytes: UInt64, duration: Duration) {
            self.extents = extents
            self.sentBytes = sentBytes
            self.wireBytes = wireBytes
            self.duration = duration
        }
    }

    /// Recent rounds kept besides the bulk round.
    package let window: Int
    /// The first sample (the bulk round), kept for its per-byte cost.
    package private(set) var bulk: Sample?
    /// The latest `window` samples after it, oldest first.
    package private(set) var recent: [Sample] = []
    /// Seconds per extent, fitted.
    package private(set) var perExtent: Double = 0
    /// Seconds per device byte, fitted; nil before any usable sample.
    package private(set) var perByte: Double?
    /// Wire bytes per second the link has shown it carries (the fastest sample).
    package private(set) var wireRate: Double?
    /// Wire bytes per device byte of the latest sample that sent anything.
    package private(set) var wireRatio: Double?
    /// The latest sample's duration over the fit's time for it, within 0.5...2 (1 before any).
    package private(set) var loadFactor: Double = 1

    package init(window: Int = 3) { self.window = max(window, 1) }

    /// Adds a round's figures (ignored if it moved nothing or took no time) and refits.
    package mutating func record(_ s: Sample) {
        guard s.sentBytes > 0, s.duration > .zero else { return }
        if bulk == nil {
            bulk = s
        } else {
            recent.append(s)
            if recent.count > window { recent.removeFirst(recent.count - window) }
        }
        wireRatio = Double(s.wireBytes) / Double(s.sentBytes)
        let rate = Double(s.wireBytes) / s.duration.dsSeconds
        wireRate = max(wireRate ?? 0, rate)
        fit()
        anchor()
    }

    /// The samples the fit uses.
    package var samples: [Sample] { (bulk.map { [$0] } ?? []) + recent }

    /// Weighted least squares of duration on (extents, bytes), weights 1/duration².
    private mutating func fit() {
        var see = 0.0, ses = 0.0, sss = 0.0, sed = 0.0, ssd = 0.0
        for x in samples {
            let d = x.duration.dsSeconds, e = Double(x.extents), b = Double(x.sentBytes)
            let w = 1 / (d * d)
            see += w * e * e; ses += w * e * b; sss += w * b * b
            sed += w * e * d; ssd += w * b * d
        }
        guard sss > 0 else { return }
        let det = see * sss - ses * ses
        // Relative to its terms, a determinant near zero means the samples do not tell extents
        // from bytes apart (one sample, or every round with the same extents per byte).
        if det > 1e-9 * see * sss {
            let pe = (sed * sss - ssd * ses) / det
            let pb = (ssd * see - sed * ses) / det
            if pe >= 0 && pb > 0 {
                perExtent = pe
                perByte = pb
                return
            }
        }
        perExtent = 0
        perByte = ssd / sss
    }

    /// How the latest sample compared with the fit.
    private mutating func anchor() {
        guard let last = recent.last ?? bulk, let perByte else { loadFactor = 1; return }
        let fitted = perExtent * Double(last.extents) + perByte * Double(last.sentBytes)
        loadFactor = fitted > 0 ? min(max(last.duration.dsSeconds / fitted, 0.5), 2) : 1
    }

    /// CPU time for `bytes` device bytes in `extents` extents, at the latest round's load
    /// (`loadFactor`); nil before any sample.
    package func cpuTime(bytes: UInt64, extents: UInt64) -> Duration? {
        guard let perByte else { return nil }
        return durationFromSeconds(loadFactor * (perExtent * Double(extents) + perByte * Double(bytes)))
    }

    /// Wire time for `bytes` device bytes at the latest compressibility; nil before any sample.
    package func wireTime(bytes: UInt64) -> Duration? {
        guard let wireRate, wireRate > 0, let wireRatio else { return nil }
        return durationFromSeconds(Double(bytes) * wireRatio / wireRate)
    }

    /// The time to move `bytes` in `extents`: max(CPU time, wire time); nil before any sample.
    package func transferTime(bytes: UInt64, extents: UInt64) -> Duration? {
        if bytes == 0 { return .zero }
        guard let cpu = cpuTime(bytes: bytes, extents: extents) else { return nil }
        return max(cpu, wireTime(bytes: bytes) ?? .zero)
    }
}

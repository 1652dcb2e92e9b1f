import DSWire
import DSTransport
import DSScheduler

/// How a migration runs.
public struct MigrationConfiguration: Sendable {
    /// The data path: connections, compression, chunk size, stall timeout.
    public var transfer = TransferOptions()
    /// When to switch over or give up, and how pre-copy rounds run: `downtimeLimit`
    /// (`--downtime-limit`), `maxBandwidth` (`--max-bandwidth`; switchover runs unthrottled),
    /// `policy` (`--on-nonconvergence`), `deadline` (`--deadline`) and the rest, with the
    /// defaults `SchedulerConfiguration` states. The source replaces `defaultFixedCosts` with
    /// what it measures at setup.
    public var scheduler = SchedulerConfiguration()
    public init() {}
}

/// The steps of the two-phase handover, in order, as each end passes them.
public enum HandoverPhase: String, Sendable, CaseIterable {
    /// Source: the rest of the state, config and channel ends are sent.
    case stateSent = "state-sent"
    /// Destination: every device is loaded, validated and in STOP; `loaded` is sent.
    case loadedSent = "loaded-sent"
    /// Source: the destination's `loaded` arrived (the source devices are still restartable).
    case loadedReceived = "loaded-received"
    /// Source: `commit` is sent; the source devices will not run again.
    case commitSent = "commit-sent"
    /// Destination: `commit` arrived; the devices are about to run.
    case commitReceived = "commit-received"
    /// Destination: every device is RUNNING and `resumed` is sent.
    case running = "running"
    /// Source: `resumed` arrived; the downtime is measured.
    case resumedReceived = "resumed-received"
}

/// One pre-copy round as the source saw it.
public struct IterationReport: Sendable {
    public var iteration: Int
    public var sentBytes: UInt64
    public var wireBytes: UInt64
    /// Bytes dirty (left to send) after the round.
    public var dirtyBytes: UInt64
    /// The scheduler's effective bandwidth (bytes/s), after the round.
    public var bandwidth: Double?
    public var predictedDowntime: Duration?
    public var duration: Duration
    /// Sent without the `--max-bandwidth` throttle, to sample the link (see `MigrationSource`).
    public var unthrottledProbe = false
}

/// A device's line in the report.
public struct DeviceReport: Sendable {
    public var id: Int
    public var spec: String
    public var bytes: UInt64
    public var sourceDigest: UInt64?
    public var destinationDigest: UInt64?
}

/// What a migration (either end) reports. Names follow QEMU's `query-migrate` where it has one.
public struct MigrationReport: Sendable {
    public var completed = false
    public var error: TransferError?
    public var totalTime: Duration = .zero
    public var setupTime: Duration = .zero
    /// The destination's own setup (making and reserving its devices), as it reported it.
    public var destinationSetupTime: Duration?
    /// The round trip between the ends (the smallest recent ping), used for the prediction.
    public var roundTrip: Duration?
    /// Measured: from the first source device leaving a running state to the destination's
    /// acknowledgement that every device is RUNNING.
    public var downtime: Duration?
    /// The scheduler's prediction when it decided to switch over.
    public var expectedDowntime: Duration?
    public var downtimeLimit: Duration = .zero
    public var iterations = 0
    public var precopyBytes: UInt64 = 0
    public var stopcopyBytes: UInt64 = 0
    public var wireBytes: UInt64 = 0
    public var converged: Bool?
    public var switchoverReason: String?
    public var devices: [DeviceReport] = []
    public var rounds: [IterationReport] = []
    /// Destination: time from setup to the end of state, and RESUMING → RUNNING.
    public var destinationLoadTime: Duration?
    public var destinationResumeTime: Duration?
    /// The destination's load rate (bytes/s) as it reported it.
    public var receiverLoadRate: Double?
    public var connections = 0
    public var compression = true

    public var throughput: Double {
        totalTime > .zero ? Double(precopyBytes + stopcopyBytes) / totalTime.seconds : 0
    }

    /// The `--json` object.
    public var jsonObject: [String: Any] {
        func ms(_ d: Duration?) -> Any { d.map { ($0.milliseconds * 1000).rounded() / 1000 } ?? NSNullLike.null }
        var o: [String: Any] = [
            "status": completed ? "completed" : "failed",
            "total_time_ms": ms(totalTime), "setup_time_ms": ms(setupTime),
            "downtime_ms": ms(downtime), "expected_downtime_ms": ms(expectedDowntime),
            "downtime_limit_ms": ms(downtimeLimit),
            "iterations": iterations, "precopy_bytes": precopyBytes, "stopcopy_bytes": stopcopyBytes,
            "wire_bytes": wireBytes, "throughput_bytes_per_sec": throughput.rounded(),
            "connections": connections, "compression": compression ? "lz4" : "none",
            "devices": devices.map { d -> [String: Any] in
                ["id": d.id, "spec": d.spec, "bytes": d.bytes,
                 "source_xxh3": d.sourceDigest.map(TransferDigestHex.hex) ?? NSNullLike.null,
                 "destination_xxh3": d.destinationDigest.map(TransferDigestHex.hex) ?? NSNullLike.null]
            },
            "rounds": rounds.map { r -> [String: Any] in
                ["iteration": r.iteration, "sent_bytes": r.sentBytes, "dirty_bytes": r.dirtyBytes,
                 "bandwidth_bytes_per_sec": r.bandwidth.map { $0.rounded() } ?? NSNullLike.null,
                 "predicted_downtime_ms": ms(r.predictedDowntime), "duration_ms": ms(r.duration),
                 "unthrottled_probe": r.unthrottledProbe]
            },
        ]
        if let e = error { o["error"] = e.message }
        if let c = converged { o["converged"] = c }
        if let r = switchoverReason { o["switchover_reason"] = r }
        if let l = destinationLoadTime { o["destination_load_ms"] = ms(l) }
        if let d = destinationSetupTime { o["destination_setup_ms"] = ms(d) }
        if let r = roundTrip { o["round_trip_ms"] = ms(r) }
        if let r = destinationResumeTime { o["destination_resume_ms"] = ms(r) }
        if let r = receiverLoadRate { o["receiver_load_rate_bytes_per_sec"] = r.rounded() }
        return o
    }
}

/// A stand-in for JSON null that a Foundation-free library can put in `jsonObject`; the CLI
/// maps it to `NSNull`.
public enum NSNullLike: Sendable { case null }

enum TransferDigestHex {
    static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

/// The source's closing summary (source → destination, after the destination's digests), so
/// both ends report the same downtime and totals.
struct MigrationSummary {
    var downtime: Duration
    var expected: Duration?
    var limit: Duration
    var iterations: Int
    var precopyBytes: UInt64
    var stopcopyBytes: UInt64
    var sourceDigests: [UInt64?]

    func encoded() -> [UInt8] {
        var w = PayloadWriter()
        w.u64(UInt64(downtime.milliseconds * 1000)); w.u64(expected.map { UInt64($0.milliseconds * 1000) } ?? UInt64.max)
        w.u64(UInt64(limit.milliseconds * 1000)); w.u32(UInt32(iterations)); w.u64(precopyBytes); w.u64(stopcopyBytes)
        w.u16(UInt16(sourceDigests.count))
        for d in sourceDigests { w.u8(d == nil ? 0 : 1); w.u64(d ?? 0) }
        return w.bytes
    }
    static func decode(_ b: [UInt8]) throws(WireError) -> MigrationSummary {
        var r = PayloadReader(b)
        func micros(_ v: UInt64) throws(WireError) -> Duration {
            guard let m = Int64(exactly: v) else { throw .malformed("duration \(v) out of range") }
            return .microseconds(m)
        }
        let down = try micros(try r.u64())
        let e = try r.u64()
        let limit = try micros(try r.u64())
        let it = Int(try r.u32())
        let pre = try r.u64(), stop = try r.u64()
        let n = Int(try r.u16())
        guard n <= WireLimits.maxDevices else { throw .malformed("\(n) devices") }
        var digests: [UInt64?] = []
        for _ in 0..<n { let has = try r.u8() == 1; let d = try r.u64(); digests.append(has ? d : nil) }
        return MigrationSummary(downtime: down, expected: e == UInt64.max ? nil : try micros(e), limit: limit,
                                iterations: it, precopyBytes: pre, stopcopyBytes: stop, sourceDigests: digests)
    }
}

/// Digests a destination reports (in its `ack`).
struct DigestList {
    var digests: [UInt64?]
    func encoded() -> [UInt8] {
        var w = PayloadWriter()
        w.u16(UInt16(digests.count))
        for d in digests { w.u8(d == nil ? 0 : 1); w.u64(d ?? 0) }
        return w.bytes
    }
    static func decode(_ b: [UInt8]) throws(WireError) -> DigestList {
        var r = PayloadReader(b)
        let n = Int(try r.u16())
        guard n <= WireLimits.maxDevices else { throw .malformed("\(n) devices") }
        var out: [UInt64?] = []
        for _ in 0..<n { let has = try r.u8() == 1; let d = try r.u64(); out.append(has ? d : nil) }
        return DigestList(digests: out)
    }
}

/// Timings a destination reports in `resumed`, and load stats in `loadStats`.
struct Timings {
    var a: Double
    var b: Double
    func encoded() -> [UInt8] { var w = PayloadWriter(); w.f64(a); w.f64(b); return w.bytes }
    static func decode(_ bytes: [UInt8]) throws(WireError) -> Timings {
        var r = PayloadReader(bytes)
        return Timings(a: try r.f64(), b: try r.f64())
    }
}

import DSSupport
import DSTransport
import DSScheduler

/// One pre-copy round as the source saw it.
public struct IterationReport: Sendable {
    public var iteration: Int
    public var sentBytes: UInt64
    public var wireBytes: UInt64
    /// Bytes the devices' dirty tracking reported for this round (what it had to send; with
    /// page-granular frames this is what `sentBytes` carries, give or take a stream's reads).
    public var dirtyBytes: UInt64
    /// Bytes still dirty when the round ended (what the next round would send).
    public var remainingBytes: UInt64 = 0
    /// Extents the round's `pages` frames carried (a run of dirty pages is one, split where a
    /// frame ends), and about how many the remaining bytes make: the transfer model's inputs.
    public var extents: UInt64 = 0
    public var remainingExtents: UInt64 = 0
    /// When the round started and ended, since the migration started.
    public var startedAt: Duration = .zero
    public var endedAt: Duration = .zero
    /// Time since the previous round's dirty-bitmap harvest (nil for the first round).
    public var harvestInterval: Duration?
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
    public var switchoverReason: SwitchoverReason?
    /// The caller cancelled after the commit point: too late to undo, so the handover went on.
    public var cancelledAfterCommit = false
    public var devices: [DeviceReport] = []
    public var rounds: [IterationReport] = []
    /// Destination: time from setup to the end of state, and RESUMING → RUNNING.
    public var destinationLoadTime: Duration?
    public var destinationResumeTime: Duration?
    /// The destination's load rate (bytes/s) as it reported it.
    public var receiverLoadRate: Double?
    public var connections = 0
    public var compression = true
    /// Which protection the session had: TLS with a pre-shared key, TLS with certificates, or
    /// none (`allowInsecure`).
    public var protection: SessionProtection = .insecure

    public var throughput: Double {
        totalTime > .zero ? Double(precopyBytes + stopcopyBytes) / totalTime.seconds : 0
    }

    /// The `--json` object.
    package var jsonObject: [String: Any] {
        func ms(_ d: Duration?) -> Any { d.map { ($0.milliseconds * 1000).rounded() / 1000 } ?? NSNullLike.null }
        var o: [String: Any] = [
            "status": completed ? "completed" : "failed",
            "total_time_ms": ms(totalTime), "setup_time_ms": ms(setupTime),
            "downtime_ms": ms(downtime), "expected_downtime_ms": ms(expectedDowntime),
            "downtime_limit_ms": ms(downtimeLimit),
            "iterations": iterations, "precopy_bytes": precopyBytes, "stopcopy_bytes": stopcopyBytes,
            "wire_bytes": wireBytes, "throughput_bytes_per_sec": throughput.rounded(),
            "connections": connections, "compression": compression ? "lz4" : "none",
            "protection": protection.rawValue,
            "devices": devices.map { d -> [String: Any] in
                ["id": d.id, "spec": d.spec, "bytes": d.bytes,
                 "source_xxh3": d.sourceDigest.map(Hex.digest) ?? NSNullLike.null,
                 "destination_xxh3": d.destinationDigest.map(Hex.digest) ?? NSNullLike.null]
            },
            "rounds": rounds.map { r -> [String: Any] in
                ["iteration": r.iteration, "sent_bytes": r.sentBytes, "dirty_bytes": r.dirtyBytes, "wire_bytes": r.wireBytes,
                 "remaining_bytes": r.remainingBytes, "extents": r.extents, "remaining_extents": r.remainingExtents,
                 "started_ms": ms(r.startedAt), "ended_ms": ms(r.endedAt),
                 "harvest_interval_ms": ms(r.harvestInterval),
                 "bandwidth_bytes_per_sec": r.bandwidth.map { $0.rounded() } ?? NSNullLike.null,
                 "predicted_downtime_ms": ms(r.predictedDowntime), "duration_ms": ms(r.duration),
                 "unthrottled_probe": r.unthrottledProbe]
            },
        ]
        if let e = error {
            o["error"] = e.message
            o["error_code"] = e.code.rawValue
            if let h = e.hint { o["hint"] = h }
        }
        if let c = converged { o["converged"] = c }
        if let r = switchoverReason { o["switchover_reason"] = r.rawValue }
        if cancelledAfterCommit { o["cancelled_after_commit"] = true }
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
package enum NSNullLike: Sendable { case null }

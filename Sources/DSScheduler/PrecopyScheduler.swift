/// # Pre-copy scheduler
///
/// The pre-copy scheduler decides, after every pre-copy round, whether to
/// send another round, switch over, or abort and stay on the source. It is a
/// pure state machine: it owns no threads, no clock and no I/O; the caller
/// feeds it measurements and the current time and gets an `Action` back.
///
/// It estimates the *effective bandwidth* as the lower of (a) the link
/// capacity, a time-weighted moving average of device bytes per second
/// moved by the sender, and (b) the destination's reported load rate. With
/// `--max-bandwidth` the caller throttles pre-copy to `precopyRateLimit`,
/// but stop-and-copy runs unthrottled, so the link capacity used for the
/// prediction comes from unthrottled samples (`recordUnthrottledSample`, and
/// every `recordSent` when no limit is configured); only if no unthrottled
/// sample exists does it fall back to the throttled sender rate, which
/// underestimates the link and so errs on the side of a longer predicted
/// downtime. The *predicted downtime* is the sum of the measured fixed
/// switchover costs (device stop transition, config state transfer,
/// destination resume, one round trip; conservative configured defaults
/// until measured) plus the remaining bytes (dirty plus stop-copy-only, over
/// all devices) divided by the effective bandwidth. The scheduler switches
/// over once the prediction is within the downtime limit and every
/// registered device has acknowledged that its initial data is loaded
/// (switchover-ack). After a minimum number of rounds it judges
/// convergence: the migration does not converge when the best remaining
/// size of the last K rounds is not below 0.95x the best before them, when
/// the dirty rate (dirty bytes at the end of a round over the round's
/// duration) is at least the bandwidth, or when the iteration cap is hit.
/// Then the policy applies: `wait` keeps iterating until the deadline,
/// `switchover` switches over anyway, `abort` aborts at once. The optional
/// deadline is checked under every policy: `wait` and `abort` abort at it,
/// `switchover` switches over at it.

// MARK: - Time

/// A point in time on the caller's clock, in nanoseconds since an arbitrary
/// origin. The scheduler never reads a clock; tests use a manual one.
public struct Instant: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static let zero = Instant(nanoseconds: 0)

    public static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }

    /// `instant + duration`, saturating at 0 and UInt64.max.
    public static func + (a: Instant, d: Duration) -> Instant {
        let ns = d.dsNanoseconds
        if ns >= 0 {
            let (sum, o) = a.nanoseconds.addingReportingOverflow(UInt64(ns))
            return Instant(nanoseconds: o ? .max : sum)
        }
        let m = ns.magnitude
        return Instant(nanoseconds: a.nanoseconds >= m ? a.nanoseconds - m : 0)
    }

    /// The signed duration from `b` to `a`.
    public static func - (a: Instant, b: Instant) -> Duration {
        if a.nanoseconds >= b.nanoseconds {
            return .nanoseconds(Int64(clamping: a.nanoseconds - b.nanoseconds))
        }
        return .nanoseconds(-Int64(clamping: b.nanoseconds - a.nanoseconds))
    }

    public var description: String { "t+\(formatDuration(.nanoseconds(Int64(clamping: nanoseconds))))" }
}

// MARK: - Configuration

/// What to do when pre-copy does not converge.
public enum NonConvergencePolicy: String, Equatable, Hashable, Sendable, CaseIterable {
    /// Keep iterating until the deadline, then abort (stay on the source).
    case wait
    /// Switch over anyway, accepting a downtime above the limit.
    case switchover
    /// Abort now and stay on the source.
    case abort
    // `init?(rawValue:)` parses "wait" | "switchover" | "abort".
}

/// The fixed, per-switchover costs that do not depend on remaining bytes.
public enum FixedCost: String, Hashable, Sendable, CaseIterable {
    /// Stopping the devices (running -> stop-copy transition).
    case stopTransition
    /// Transferring the non-iterable configuration state.
    case configState
    /// Resuming the devices on the destination.
    case destinationResume
    /// One source <-> destination round trip (the switchover handshake).
    case roundTrip
}

/// A value for each `FixedCost`.
public struct FixedCosts: Equatable, Hashable, Sendable {
    public var stopTransition: Duration
    public var configState: Duration
    public var destinationResume: Duration
    public var roundTrip: Duration

    public init(stopTransition: Duration, configState: Duration,
                destinationResume: Duration, roundTrip: Duration) {
        self.stopTransition = stopTransition
        self.configState = configState
        self.destinationResume = destinationResume
        self.roundTrip = roundTrip
    }

    /// Conservative defaults used until measured: 50 ms stop, 20 ms config
    /// state, 50 ms resume, 10 ms round trip (130 ms in all).
    public static let conservative = FixedCosts(
        stopTransition: .milliseconds(50), configState: .milliseconds(20),
        destinationResume: .milliseconds(50), roundTrip: .milliseconds(10))

    public static let zero = FixedCosts(
        stopTransition: .zero, configState: .zero, destinationResume: .zero, roundTrip: .zero)

    public subscript(cost: FixedCost) -> Duration {
        get {
            switch cost {
            case .stopTransition: return stopTransition
            case .configState: return configState
            case .destinationResume: return destinationResume
            case .roundTrip: return roundTrip
            }
        }
        set {
            switch cost {
            case .stopTransition: stopTransition = newValue
            case .configState: configState = newValue
            case .destinationResume: destinationResume = newValue
            case .roundTrip: roundTrip = newValue
            }
        }
    }

    public var total: Duration { stopTransition + configState + destinationResume + roundTrip }
}

public struct SchedulerConfiguration: Equatable, Sendable {
    /// Maximum acceptable predicted downtime.
    public var downtimeLimit: Duration
    /// Pre-copy throttle in device bytes/s (`--max-bandwidth`); nil = none.
    /// Never applied to stop-and-copy, and not used for the prediction.
    public var maxBandwidth: UInt64?
    public var policy: NonConvergencePolicy
    /// Measured from the scheduler's `start`; checked under every policy.
    public var deadline: Duration?
    /// Fixed costs assumed until `recordFixedCost` measures them.
    public var defaultFixedCosts: FixedCosts
    /// Reaching this many rounds counts as non-convergence, when no `deadline` is set (with
    /// one, the deadline alone ends the waiting).
    public var maxIterations: Int
    /// Gate switchover on every registered device's switchover-ack.
    public var requireSwitchoverAck: Bool
    /// Rounds completed before non-convergence is judged.
    public var minimumRoundsBeforeJudging: Int
    /// K: the number of most recent rounds compared against the earlier ones.
    public var stallWindow: Int
    /// Remaining must drop below this fraction of the earlier best (0.95).
    public var stallShrinkFactor: Double
    /// Time constant of the rate averages: a sample lasting `dt` gets
    /// weight dt / (dt + tau).
    public var rateTimeConstant: Duration
    /// Devices registered up front (each must ack before switchover).
    public var registeredDevices: [Int]
    /// The fraction of the limit held back for the prediction's own error: switchover when
    /// the predicted downtime is at most `downtimeLimit × (1 − predictionMargin)`.
    public var predictionMargin: Double
    /// Bandwidth samples (rounds) needed before a prediction may switch over, unless nothing
    /// remains: one round's rate on a busy machine can be off by a fifth.
    public var minimumBandwidthSamples: Int

    public init(
        downtimeLimit: Duration = .milliseconds(300),
        maxBandwidth: UInt64? = nil,
        policy: NonConvergencePolicy = .wait,
        deadline: Duration? = nil,
        defaultFixedCosts: FixedCosts = .conservative,
        maxIterations: Int = 1000,
        requireSwitchoverAck: Bool = true,
        minimumRoundsBeforeJudging: Int = 3,
        stallWindow: Int = 3,
        stallShrinkFactor: Double = 0.95,
        rateTimeConstant: Duration = .seconds(1),
        registeredDevices: [Int] = [],
        predictionMargin: Double = 0,
        minimumBandwidthSamples: Int = 1
    ) {
        self.minimumBandwidthSamples = max(minimumBandwidthSamples, 0)
        self.predictionMargin = min(max(predictionMargin, 0), 0.9)
        self.downtimeLimit = downtimeLimit
        self.maxBandwidth = maxBandwidth
        self.policy = policy
        self.deadline = deadline
        self.defaultFixedCosts = defaultFixedCosts
        self.maxIterations = maxIterations
        self.requireSwitchoverAck = requireSwitchoverAck
        self.minimumRoundsBeforeJudging = minimumRoundsBeforeJudging
        self.stallWindow = stallWindow
        self.stallShrinkFactor = stallShrinkFactor
        self.rateTimeConstant = rateTimeConstant
        self.registeredDevices = registeredDevices
    }
}

// MARK: - Decisions

public enum SwitchoverReason: String, Equatable, Hashable, Sendable {
    /// Predicted downtime is within the limit.
    case converged
    /// Nothing remains to send and the fixed costs fit the limit.
    case nothingToSend
    /// Pre-copy does not converge and the policy is `.switchover`.
    case nonConvergencePolicy
    /// The deadline passed and the policy is `.switchover`.
    case deadlineReached
    /// No device can pre-copy: everything moves in stop-copy, and iterating cannot shrink it.
    case noPrecopy
}

public enum Action: Equatable, Sendable {
    /// Send another pre-copy round, throttled to `rateLimit` bytes/s if set.
    case iterate(rateLimit: UInt64?)
    /// Stop the source and copy the rest.
    case switchover(reason: SwitchoverReason)
    /// Give up; the VM stays (or resumes) on the source.
    case abort(reason: String)
    /// Switchover is allowed but a switchover-ack is missing: keep
    /// pre-copying (at `precopyRateLimit`) and ask again.
    case waitForSwitchoverAck

    public var isTerminal: Bool {
        switch self {
        case .switchover, .abort: return true
        case .iterate, .waitForSwitchoverAck: return false
        }
    }
}

/// One row of the per-round history, for reporting.
public struct RoundRecord: Equatable, Sendable {
    /// 1-based round number.
    public var iteration: Int
    /// When the round ended (the `now` passed to `nextAction`).
    public var endedAt: Instant
    /// Device bytes sent during the round.
    public var sentBytes: UInt64
    /// Wire bytes (after compression/framing) sent during the round.
    public var wireBytes: UInt64
    /// Remaining bytes (dirty + stop-copy-only) at the end of the round.
    public var remainingBytes: UInt64
    /// Predicted downtime at the end of the round; nil if bandwidth unknown.
    public var predictedDowntime: Duration?
    /// The action returned for this round.
    public var action: Action
}

// MARK: - Scheduler

/// The pre-copy scheduler state machine (see the file header).
///
/// Usage per round: report what was sent (`recordSent`), the devices'
/// remaining bytes (`updateRemaining`), any receiver rate / fixed cost /
/// ack messages that arrived, then call `nextAction(now:)`, which closes
/// the round. Once it returns `.switchover` or `.abort` the decision is
/// final and repeated calls return it unchanged.
public struct PrecopyScheduler: Sendable {
    public let configuration: SchedulerConfiguration
    /// When the migration started; the deadline counts from here, and the
    /// first round is taken to start here.
    public let start: Instant

    // Rates (device bytes per second), nil until a sample arrives.
    public private(set) var senderRate: Double?
    /// Samples of the link capacity so far: unthrottled rounds (every round without
    /// `maxBandwidth`; only the probes with it).
    public private(set) var bandwidthSamples = 0
    public private(set) var linkCapacity: Double?
    public private(set) var receiverRate: Double?
    public private(set) var dirtyRateBytesPerSecond: Double?

    public private(set) var measuredFixedCosts: [FixedCost: Duration] = [:]
    public private(set) var registeredDevices: Set<Int>
    public private(set) var acknowledgedDevices: Set<Int> = []
    private var dirtyByDevice: [Int: UInt64] = [:]
    private var stopCopyOnlyByDevice: [Int: UInt64] = [:]

    public private(set) var iteration: Int = 0
    public private(set) var history: [RoundRecord] = []
    public private(set) var totalSentBytes: UInt64 = 0
    public private(set) var totalWireBytes: UInt64 = 0
    /// The final decision, once made.
    public private(set) var decision: Action?
    /// Why the last judged round was considered non-converging, if it was.
    public private(set) var nonConvergenceReason: String?

    private var roundStart: Instant
    private var roundSentBytes: UInt64 = 0
    private var roundWireBytes: UInt64 = 0

    public init(configuration: SchedulerConfiguration, start: Instant) {
        self.configuration = configuration
        self.start = start
        self.roundStart = start
        self.registeredDevices = Set(configuration.registeredDevices)
    }

    // MARK: Inputs

    /// Registers a device whose switchover-ack is required.
    public mutating func registerDevice(id: Int) {
        registeredDevices.insert(id)
    }

    /// The destination has loaded `deviceID`'s initial data.
    public mutating func switchoverAcknowledged(deviceID: Int) {
        acknowledgedDevices.insert(deviceID)
    }

    /// The sender moved `bytes` device bytes (`wireBytes` on the wire) in
    /// `duration`. Feeds `senderRate`, and `linkCapacity` too when no
    /// `maxBandwidth` throttle is configured (then the sample is unthrottled).
    public mutating func recordSent(bytes: UInt64, wireBytes: UInt64, over duration: Duration) {
        roundSentBytes &+= bytes
        roundWireBytes &+= wireBytes
        totalSentBytes &+= bytes
        totalWireBytes &+= wireBytes
        guard let rate = Self.rate(bytes: bytes, over: duration) else { return }
        senderRate = smooth(senderRate, rate, over: duration)
        if configuration.maxBandwidth == nil {
            bandwidthSamples += 1
            linkCapacity = smooth(linkCapacity, rate, over: duration)
        }
    }

    /// A transfer made without the pre-copy throttle (initial probe, burst,
    /// stop-copy of an earlier migration): a sample of the link capacity.
    public mutating func recordUnthrottledSample(bytes: UInt64, over duration: Duration) {
        guard let rate = Self.rate(bytes: bytes, over: duration) else { return }
        bandwidthSamples += 1
        linkCapacity = smooth(linkCapacity, rate, over: duration)
    }

    /// The destination's reported load rate (device bytes/s it can apply).
    /// Averaged per report with weight 1/2.
    public mutating func recordReceiverLoadRate(bytesPerSecond: Double) {
        guard bytesPerSecond.isFinite, bytesPerSecond >= 0 else { return }
        if let old = receiverRate {
            receiverRate = old + 0.5 * (bytesPerSecond - old)
        } else {
            receiverRate = bytesPerSecond
        }
    }

    /// Replaces a fixed cost's default (or earlier measurement) with the
    /// most recent measurement.
    public mutating func recordFixedCost(_ cost: FixedCost, _ duration: Duration) {
        measuredFixedCosts[cost] = duration
    }

    /// A device's current dirty bytes and the bytes it can only send during
    /// stop-copy. Replaces the device's previous values.
    public mutating func updateRemaining(deviceID: Int, dirtyBytes: UInt64, stopCopyOnlyBytes: UInt64 = 0) {
        dirtyByDevice[deviceID] = dirtyBytes
        stopCopyOnlyByDevice[deviceID] = stopCopyOnlyBytes
    }

    // MARK: Derived values

    /// The pre-copy throttle the caller must apply (bytes/s), if any.
    public var precopyRateLimit: UInt64? { configuration.maxBandwidth }

    /// Effective bandwidth used for the prediction: min(link capacity, or
    /// the sender rate when no unthrottled sample exists; receiver rate).
    public var bandwidthBytesPerSecond: Double? {
        let send = linkCapacity ?? senderRate
        switch (send, receiverRate) {
        case let (s?, r?): return min(s, r)
        case let (s?, nil): return s
        case let (nil, r?): return r
        case (nil, nil): return nil
        }
    }

    public var dirtyBytes: UInt64 { dirtyByDevice.values.reduce(0, &+) }
    public var stopCopyOnlyBytes: UInt64 { stopCopyOnlyByDevice.values.reduce(0, &+) }
    public var remainingBytes: UInt64 { dirtyBytes &+ stopCopyOnlyBytes }

    /// Measured fixed costs, defaults where not yet measured.
    public var fixedCosts: FixedCosts {
        var c = configuration.defaultFixedCosts
        for (k, v) in measuredFixedCosts { c[k] = v }
        return c
    }

    /// Fixed costs + remaining / bandwidth; nil while bandwidth is unknown
    /// (or zero) and something remains.
    public var predictedDowntime: Duration? {
        let fixed = fixedCosts.total
        let remaining = remainingBytes
        if remaining == 0 { return fixed }
        guard let bw = bandwidthBytesPerSecond, bw > 0 else { return nil }
        return fixed + durationFromSeconds(Double(remaining) / bw)
    }

    /// Registered devices whose ack is still missing (empty if not required).
    public var pendingAcks: Set<Int> {
        guard configuration.requireSwitchoverAck else { return [] }
        return registeredDevices.subtracting(acknowledgedDevices)
    }

    // MARK: Decision

    /// Closes the current round at `now` and decides what to do next.
    public mutating func nextAction(now: Instant) -> Action {
        if let decision { return decision }

        // Close the round.
        iteration += 1
        let roundDuration = now - roundStart
        if roundDuration > .zero {
            let dirtyRate = Double(dirtyBytes) / roundDuration.dsSeconds
            dirtyRateBytesPerSecond = smooth(dirtyRateBytesPerSecond, dirtyRate, over: roundDuration)
        }
        let predicted = predictedDowntime
        let why = nonConvergence()
        nonConvergenceReason = why
        let action = decide(now: now, predicted: predicted, nonConvergence: why)
        history.append(RoundRecord(
            iteration: iteration, endedAt: now, sentBytes: roundSentBytes,
            wireBytes: roundWireBytes, remainingBytes: remainingBytes,
            predictedDowntime: predicted, action: action))
        roundStart = now
        roundSentBytes = 0
        roundWireBytes = 0
        if action.isTerminal { decision = action }
        return action
    }

    private func decide(now: Instant, predicted: Duration?, nonConvergence why: String?) -> Action {
        let config = configuration
        let budget = config.downtimeLimit * (1 - config.predictionMargin)
        let enoughSamples = remainingBytes == 0 || bandwidthSamples >= config.minimumBandwidthSamples
        let fits = enoughSamples && (predicted.map { $0 <= budget } ?? false)
        let missing = pendingAcks
        let iterate = Action.iterate(rateLimit: precopyRateLimit)

        if fits && missing.isEmpty {
            return .switchover(reason: remainingBytes == 0 ? .nothingToSend : .converged)
        }

        if let deadline = config.deadline, now - start >= deadline {
            let summary = "deadline of \(formatDuration(deadline)) passed; \(predictionSummary(predicted))"
            switch config.policy {
            case .wait, .abort:
                return .abort(reason: "\(summary); staying on the source")
            case .switchover:
                if !missing.isEmpty {
                    return .abort(reason: "\(summary); switchover-ack missing from devices \(missing.sorted()); staying on the source")
                }
                return .switchover(reason: .deadlineReached)
            }
        }

        if fits { return .waitForSwitchoverAck }

        guard let why else { return iterate }
        let detail = "migration does not converge (\(why)): \(predictionSummary(predicted)); dirty rate \(formatRate(dirtyRateBytesPerSecond)) vs bandwidth \(formatRate(bandwidthBytesPerSecond))"
        switch config.policy {
        case .wait:
            if config.deadline == nil && iteration >= config.maxIterations {
                return .abort(reason: "\(detail); staying on the source")
            }
            return iterate
        case .switchover:
            return missing.isEmpty ? .switchover(reason: .nonConvergencePolicy) : .waitForSwitchoverAck
        case .abort:
            return .abort(reason: "\(detail); staying on the source")
        }
    }

    /// Why the migration is judged not to converge, or nil.
    private func nonConvergence() -> String? {
        let config = configuration
        // With a deadline, the deadline decides when waiting ends: a cap on the count of
        // (possibly tiny) rounds must not end a migration before it.
        if config.deadline == nil && iteration >= config.maxIterations {
            return "reached the maximum of \(config.maxIterations) iterations"
        }
        guard iteration >= config.minimumRoundsBeforeJudging else { return nil }
        if let dirty = dirtyRateBytesPerSecond, let bw = bandwidthBytesPerSecond, dirty >= bw {
            return "dirty rate is at least the bandwidth"
        }
        // Remaining per round, including the round being closed now.
        let k = config.stallWindow
        var remainders = history.map(\.remainingBytes)
        remainders.append(remainingBytes)
        if k > 0, remainders.count > k {
            let recentBest = remainders.suffix(k).min()!
            let earlierBest = remainders.dropLast(k).min()!
            if Double(recentBest) >= config.stallShrinkFactor * Double(earlierBest) {
                return "remaining bytes did not shrink over the last \(k) rounds"
            }
        }
        return nil
    }

    private func predictionSummary(_ predicted: Duration?) -> String {
        let p = predicted.map(formatDuration) ?? "unknown (no bandwidth measured)"
        return "predicted downtime \(p) vs limit \(formatDuration(configuration.downtimeLimit))"
    }

    // MARK: Helpers

    private static func rate(bytes: UInt64, over duration: Duration) -> Double? {
        guard duration > .zero else { return nil }
        return Double(bytes) / duration.dsSeconds
    }

    /// Time-weighted moving average: weight dt / (dt + tau).
    private func smooth(_ old: Double?, _ sample: Double, over dt: Duration) -> Double {
        guard let old else { return sample }
        let d = dt.dsSeconds
        let tau = configuration.rateTimeConstant.dsSeconds
        let weight = tau > 0 ? d / (d + tau) : 1
        return old + weight * (sample - old)
    }
}

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

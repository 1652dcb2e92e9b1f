/// # Pre-copy scheduler
///
/// The pre-copy scheduler decides, after every pre-copy round, whether to
/// send another round (and how), switch over, or abort and stay on the
/// source. It is a pure state machine: it owns no threads, no clock and no
/// I/O; the caller feeds it measurements and the current time and gets an
/// `Action` back, which it obeys.
///
/// Each round runs to a `RoundPlan` (`firstRound()`, then the plan carried
/// by `.iterate` or `.waitForSwitchoverAck`): its rate limit, whether it is a
/// probe, and its minimum duration. With `maxBandwidth` (`--max-bandwidth`)
/// rounds are throttled to it, but stop-and-copy runs unthrottled, so a
/// throttled round says nothing about the link stop-copy will use. So at
/// least every `probeInterval` rounds after round 1, a round whose pre-copy
/// bytes (as last reported by `updateRemaining`) lie between
/// `probeMinimumBytes` and `probeMaximumDuration` at the cap goes unthrottled:
/// a bounded burst, a *probe*, that samples the real link.
///
/// It estimates the *effective bandwidth* as the lower of (a) the link
/// capacity, a time-weighted moving average of device bytes per second
/// moved by the sender in unthrottled rounds (every round without a cap, the
/// probes with one), and (b) the destination's reported load rate, taken
/// from the same unthrottled rounds only (a throttled round measures the
/// throttle). Round 1, the bulk copy of the initial state, is no sample: its
/// rate says little about stop-copy, which moves scattered dirty pages. Only
/// if no unthrottled sample exists does it fall back to the throttled sender
/// rate, which underestimates the link and so errs on the side of a longer
/// predicted downtime. The *predicted downtime* is the sum of the measured
/// fixed switchover costs (device stop transition, config state transfer,
/// destination resume, one round trip; conservative configured defaults
/// until measured) plus the remaining bytes (dirty plus stop-copy-only, over
/// all devices) divided by the effective bandwidth; once rounds report the
/// extents they sent, the time to move what remains comes instead from the
/// transfer model (`TransferCostModel`: per-extent and per-byte CPU time,
/// fitted over the rounds, apart from wire time at the dirty pages'
/// compressibility; the longer counts). The scheduler switches
/// over once the prediction is within the downtime limit (less
/// `predictionMargin`), rests on `minimumBandwidthSamples` samples, and every
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

// MARK: - Scheduler

/// The pre-copy scheduler state machine (see the file header).
///
/// Usage: run round 1 to `firstRound()`. After each round report it
/// (`recordRound`), the devices' remaining bytes (`updateRemaining`), any
/// receiver rate / fixed cost / ack messages that arrived, then call
/// `nextAction(now:)`, which closes the round and plans the next one. Once it
/// returns `.switchover` or `.abort` the decision is final and repeated calls
/// return it unchanged.
package struct PrecopyScheduler: Sendable {
    /// The configuration, normalized (`SchedulerConfiguration.normalized`).
    package let configuration: SchedulerConfiguration
    /// When the migration started; the deadline counts from here, and the
    /// first round is taken to start here.
    package let start: Instant

    // Rates (device bytes per second), nil until a sample arrives.
    package private(set) var senderRate: Double?
    /// Samples of the link capacity so far: unthrottled rounds after round 1 (every round
    /// without `maxBandwidth`; only the probes with it).
    package private(set) var bandwidthSamples = 0
    package private(set) var linkCapacity: Double?
    package private(set) var receiverRate: Double?
    package private(set) var dirtyRateBytesPerSecond: Double?

    package private(set) var measuredFixedCosts: [FixedCost: Duration] = [:]
    package private(set) var registeredDevices: Set<Int>
    package private(set) var acknowledgedDevices: Set<Int> = []
    /// The transfer model (CPU time apart from wire time), fed by rounds that report their
    /// extents; until one does, the prediction is remaining bytes over the bandwidth.
    package private(set) var costModel = TransferCostModel()
    private var dirtyByDevice: [Int: UInt64] = [:]
    private var extentsByDevice: [Int: UInt64] = [:]
    private var stopCopyOnlyByDevice: [Int: UInt64] = [:]

    /// Rounds closed by `nextAction` so far.
    package private(set) var iteration: Int = 0
    /// The most recent round planned as a probe; 0 before the first.
    package private(set) var lastProbe: Int = 0
    /// With `.external` switchover control: why the scheduler would switch over now (nil: it
    /// would not). Updated by every `nextAction`.
    package private(set) var ready: SwitchoverReason?
    package private(set) var history: [RoundRecord] = []
    package private(set) var totalSentBytes: UInt64 = 0
    package private(set) var totalWireBytes: UInt64 = 0
    /// The final decision, once made.
    package private(set) var decision: Action?
    /// Why the last judged round was considered non-converging, if it was.
    package private(set) var nonConvergenceReason: String?

    private var roundStart: Instant
    private var roundSentBytes: UInt64 = 0
    private var roundWireBytes: UInt64 = 0

    package init(configuration: SchedulerConfiguration, start: Instant) {
        self.configuration = configuration.normalized
        self.start = start
        self.roundStart = start
        self.registeredDevices = Set(configuration.registeredDevices)
    }

    // MARK: Inputs

    /// Registers a device whose switchover-ack is required.
    package mutating func registerDevice(id: Int) {
        registeredDevices.insert(id)
    }

    /// The destination has loaded `deviceID`'s initial data.
    package mutating func switchoverAcknowledged(deviceID: Int) {
        acknowledgedDevices.insert(deviceID)
    }

    /// Round `iteration` (its plan's number) moved `bytes` device bytes (`wireBytes` on the
    /// wire) in `duration`. Every round counts in the totals; from round 2 on it feeds
    /// `senderRate`, and `linkCapacity` too when it ran unthrottled (no `maxBandwidth`, or
    /// it was the last probe).
    ///
    /// With `extents` (the extents its `pages` frames carried), an unthrottled round, round 1
    /// included (its bulk copy pins the per-byte cost), also feeds the transfer model
    /// (`TransferCostModel`), which then makes the prediction.
    package mutating func recordRound(iteration: Int, bytes: UInt64, wireBytes: UInt64, duration: Duration,
                                      extents: UInt64? = nil) {
        roundSentBytes &+= bytes
        roundWireBytes &+= wireBytes
        totalSentBytes &+= bytes
        totalWireBytes &+= wireBytes
        if let extents, isUnthrottled(round: iteration) {
            costModel.record(.init(extents: extents, sentBytes: bytes, wireBytes: wireBytes, duration: duration))
        }
        guard iteration > 1, let rate = Self.rate(bytes: bytes, over: duration) else { return }
        senderRate = smooth(senderRate, rate, over: duration)
        if isUnthrottled(round: iteration) {
            bandwidthSamples += 1
            linkCapacity = smooth(linkCapacity, rate, over: duration)
        }
    }

    /// The destination's load rate (device bytes/s it applied) for round `round`. Used only
    /// when that round ran unthrottled and was not round 1 (a throttled round measures the
    /// throttle, not the destination); averaged per report with weight 1/2. Returns whether
    /// the sample was used.
    @discardableResult
    package mutating func recordReceiverLoadRate(round: Int, bytesPerSecond: Double) -> Bool {
        guard round > 1, isUnthrottled(round: round), bytesPerSecond.isFinite, bytesPerSecond >= 0 else { return false }
        if let old = receiverRate {
            receiverRate = old + 0.5 * (bytesPerSecond - old)
        } else {
            receiverRate = bytesPerSecond
        }
        return true
    }

    /// Replaces a fixed cost's default (or earlier measurement) with the
    /// most recent measurement.
    package mutating func recordFixedCost(_ cost: FixedCost, _ duration: Duration) {
        measuredFixedCosts[cost] = duration
    }

    /// A device's current dirty bytes (what its next round sends) and the bytes it can only
    /// send during stop-copy. Replaces the device's previous values.
    /// `extents`: the extents its dirty bytes make (for the transfer model; 0 for a stream).
    package mutating func updateRemaining(deviceID: Int, dirtyBytes: UInt64, stopCopyOnlyBytes: UInt64 = 0, extents: UInt64 = 0) {
        dirtyByDevice[deviceID] = dirtyBytes
        extentsByDevice[deviceID] = extents
        stopCopyOnlyByDevice[deviceID] = stopCopyOnlyBytes
    }

    // MARK: Derived values

    /// The pre-copy throttle (bytes/s) of rounds that are not probes, if any.
    package var precopyRateLimit: UInt64? { configuration.maxBandwidth }

    /// Effective bandwidth used for the prediction: min(link capacity, or
    /// the sender rate when no unthrottled sample exists; receiver rate).
    package var bandwidthBytesPerSecond: Double? {
        let send = linkCapacity ?? senderRate
        switch (send, receiverRate) {
        case let (s?, r?): return min(s, r)
        case let (s?, nil): return s
        case let (nil, r?): return r
        case (nil, nil): return nil
        }
    }

    package var dirtyBytes: UInt64 { dirtyByDevice.values.reduce(0, &+) }
    package var stopCopyOnlyBytes: UInt64 { stopCopyOnlyByDevice.values.reduce(0, &+) }
    package var remainingBytes: UInt64 { dirtyBytes &+ stopCopyOnlyBytes }

    /// Measured fixed costs, defaults where not yet measured.
    package var fixedCosts: FixedCosts {
        var c = configuration.defaultFixedCosts
        for (k, v) in measuredFixedCosts { c[k] = v }
        return c
    }

    /// Extents of the remaining dirty bytes, over all devices.
    package var remainingExtents: UInt64 { extentsByDevice.values.reduce(0, &+) }

    /// Fixed costs + the time to move what remains; nil while nothing has been measured and
    /// something remains. With the transfer model fed (rounds that report extents), that time is
    /// the model's (CPU time apart from wire time), or the remaining bytes at the destination's
    /// load rate if that is longer; otherwise it is remaining / bandwidth.
    package var predictedDowntime: Duration? {
        let fixed = fixedCosts.total
        let remaining = remainingBytes
        if remaining == 0 { return fixed }
        if let model = costModel.transferTime(bytes: remaining, extents: remainingExtents) {
            let receiver = receiverRate.flatMap { $0 > 0 ? durationFromSeconds(Double(remaining) / $0) : nil } ?? .zero
            return fixed + max(model, receiver)
        }
        guard let bw = bandwidthBytesPerSecond, bw > 0 else { return nil }
        return fixed + durationFromSeconds(Double(remaining) / bw)
    }

    /// Registered devices whose ack is still missing (empty if not required).
    package var pendingAcks: Set<Int> {
        guard configuration.requireSwitchoverAck else { return [] }
        return registeredDevices.subtracting(acknowledgedDevices)
    }

    // MARK: Decision

    /// The plan of round 1, the bulk copy, before any round has run: throttled to
    /// `maxBandwidth` (never a probe).
    package func firstRound() -> RoundPlan {
        plan(round: 1)
    }

    /// Closes the current round at `now` and decides what to do next; a non-terminal
    /// action carries the next round's plan.
    package mutating func nextAction(now: Instant) -> Action {
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
        let next = plan(round: iteration + 1)
        var action = decide(now: now, predicted: predicted, nonConvergence: why, next: next)
        ready = nil
        if configuration.switchover == .external, case .switchover(let reason) = action {
            // The caller decides: the round goes on, marked ready.
            ready = reason
            action = .iterate(next)
        }
        if action.roundPlan?.probe == true { lastProbe = next.iteration }
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

    // MARK: Helpers

    /// Whether round `round` ran at full speed: always without a cap, else only as a probe.
    private func isUnthrottled(round: Int) -> Bool {
        configuration.maxBandwidth == nil || round == lastProbe
    }

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

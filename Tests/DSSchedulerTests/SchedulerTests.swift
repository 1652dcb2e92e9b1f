import Testing
@testable import DSScheduler

let MiB: UInt64 = 1 << 20

/// A clock the test moves by hand.
struct ManualClock {
    var now = Instant(nanoseconds: 1_000_000_000)  // arbitrary non-zero origin
    mutating func advance(_ d: Duration) { now = now + d }
}

/// One pre-copy round as the session runs it: round `s.iteration + 1` moved `sent` bytes
/// over `over`, after which device 0 has `dirty` dirty bytes; the clock advances by `over`
/// and the round closes. Round 1 is the bulk copy: no bandwidth sample.
func round(
    _ s: inout PrecopyScheduler, _ clock: inout ManualClock,
    sent: UInt64, over: Duration, dirty: UInt64, stopCopyOnly: UInt64 = 0
) -> Action {
    s.recordRound(iteration: s.iteration + 1, bytes: sent, wireBytes: sent / 2, duration: over)
    clock.advance(over)
    s.updateRemaining(deviceID: 0, dirtyBytes: dirty, stopCopyOnlyBytes: stopCopyOnly)
    return s.nextAction(now: clock.now)
}

/// The plan of round `n`: throttled to `limit` unless a probe, 20 ms minimum.
func plan(_ n: Int, limit: UInt64? = nil, probe: Bool = false) -> RoundPlan {
    RoundPlan(iteration: n, rateLimit: probe ? nil : limit, probe: probe, minimumDuration: .milliseconds(20))
}

/// `.iterate` with the plan of round `n`.
func iterating(_ n: Int, limit: UInt64? = nil, probe: Bool = false) -> Action {
    .iterate(plan(n, limit: limit, probe: probe))
}

func approx(_ a: Double?, _ b: Double, tolerance: Double = 1e-6) -> Bool {
    guard let a else { return false }
    return abs(a - b) <= tolerance * max(1, abs(b))
}

@Suite("Convergence")
struct ConvergenceTests {
    @Test func convergesInTwoRoundsWithLowDirtyRate() {
        var clock = ManualClock()
        // The old defaults (no margin, one sample), so that round 2 alone decides.
        var s = PrecopyScheduler(
            configuration: .init(downtimeLimit: .milliseconds(300), predictionMargin: 0, minimumBandwidthSamples: 1),
            start: clock.now)
        // 200 MiB dirtied in the 1 s bulk round, which is no bandwidth sample.
        let a1 = round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 200 * MiB)
        #expect(a1 == iterating(2))
        #expect(s.predictedDowntime == nil)
        // Round 2 shows a 1000 MiB/s link.
        let a2 = round(&s, &clock, sent: 200 * MiB, over: .milliseconds(200), dirty: 20 * MiB)
        #expect(a2 == .switchover(reason: .converged))
        #expect(s.iteration == 2)
        #expect(s.predictedDowntime == .milliseconds(150))  // 130 ms defaults + 20 ms
        #expect(s.remainingBytes == 20 * MiB)
        #expect(approx(s.bandwidthBytesPerSecond, Double(1000 * MiB)))
        // Dirty-rate samples 200 MiB/s (1 s) then 100 MiB/s (0.2 s, weight 1/6).
        #expect(approx(s.dirtyRateBytesPerSecond, Double(MiB) * (200 - 100.0 / 6)))
        #expect(s.history.map(\.iteration) == [1, 2])
        #expect(s.history.map(\.sentBytes) == [1000 * MiB, 200 * MiB])
        #expect(s.history.map(\.wireBytes) == [500 * MiB, 100 * MiB])
        #expect(s.history.map(\.remainingBytes) == [200 * MiB, 20 * MiB])
        #expect(s.history.map(\.predictedDowntime) == [nil, .milliseconds(150)])
        #expect(s.totalSentBytes == 1200 * MiB)
        // The decision is final.
        clock.advance(.seconds(1))
        #expect(s.nextAction(now: clock.now) == .switchover(reason: .converged))
        #expect(s.iteration == 2)
    }

    @Test func nothingToSendSwitchesWithoutBandwidth() {
        var s = PrecopyScheduler(configuration: .init(), start: .zero)
        s.updateRemaining(deviceID: 7, dirtyBytes: 0, stopCopyOnlyBytes: 0)
        #expect(s.bandwidthBytesPerSecond == nil)
        #expect(s.predictedDowntime == FixedCosts.conservative.total)
        #expect(s.nextAction(now: Instant(nanoseconds: 5)) == .switchover(reason: .nothingToSend))
    }

    @Test func unknownBandwidthMeansNoPrediction() {
        var s = PrecopyScheduler(configuration: .init(), start: .zero)
        s.updateRemaining(deviceID: 1, dirtyBytes: 10, stopCopyOnlyBytes: 0)
        #expect(s.predictedDowntime == nil)
        #expect(s.nextAction(now: Instant(nanoseconds: 1_000)) == iterating(2))
    }

    @Test func remainingSumsDirtyAndStopCopyOnlyOverDevices() {
        var s = PrecopyScheduler(configuration: .init(defaultFixedCosts: .zero), start: .zero)
        s.updateRemaining(deviceID: 1, dirtyBytes: 10 * MiB, stopCopyOnlyBytes: 5 * MiB)
        s.updateRemaining(deviceID: 2, dirtyBytes: 20 * MiB, stopCopyOnlyBytes: 15 * MiB)
        s.updateRemaining(deviceID: 1, dirtyBytes: 30 * MiB, stopCopyOnlyBytes: 5 * MiB)  // replaces
        #expect(s.dirtyBytes == 50 * MiB)
        #expect(s.stopCopyOnlyBytes == 20 * MiB)
        #expect(s.remainingBytes == 70 * MiB)
        s.recordRound(iteration: 2, bytes: 100 * MiB, wireBytes: 0, duration: .seconds(1))
        #expect(s.predictedDowntime == .milliseconds(700))
    }
}

@Suite("Non-convergence policies")
struct NonConvergenceTests {
    /// 100 MiB/s link, 200 MiB dirtied per 1 s round: dirty rate 2x bandwidth.
    static func hopelessRound(_ s: inout PrecopyScheduler, _ c: inout ManualClock) -> Action {
        round(&s, &c, sent: 100 * MiB, over: .seconds(1), dirty: 200 * MiB)
    }

    @Test func abortPolicyAbortsRightAfterJudgingRounds() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(policy: .abort), start: clock.now)
        #expect(Self.hopelessRound(&s, &clock) == iterating(2))
        #expect(Self.hopelessRound(&s, &clock) == iterating(3))
        let a3 = Self.hopelessRound(&s, &clock)
        #expect(a3 == .abort(reason: "migration does not converge (dirty rate is at least the bandwidth): predicted downtime 2130.0 ms vs limit 300.0 ms; dirty rate 200.0 MiB/s vs bandwidth 100.0 MiB/s; staying on the source"))
        #expect(s.iteration == 3)
        #expect(s.nonConvergenceReason == "dirty rate is at least the bandwidth")
        #expect(s.decision == a3)
        #expect(Self.hopelessRound(&s, &clock) == a3)
    }

    @Test func switchoverPolicySwitchesAfterJudgingRounds() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(policy: .switchover), start: clock.now)
        #expect(Self.hopelessRound(&s, &clock) == iterating(2))
        #expect(Self.hopelessRound(&s, &clock) == iterating(3))
        #expect(Self.hopelessRound(&s, &clock) == .switchover(reason: .nonConvergencePolicy))
        #expect(s.predictedDowntime == .milliseconds(2130))
    }

    @Test func waitPolicyIteratesUntilDeadlineThenAborts() {
        var clock = ManualClock()
        var s = PrecopyScheduler(
            configuration: .init(policy: .wait, deadline: .seconds(10)), start: clock.now)
        for i in 1...9 {
            #expect(Self.hopelessRound(&s, &clock) == iterating(i + 1), "round \(i)")
        }
        #expect(Self.hopelessRound(&s, &clock) == .abort(reason: "deadline of 10000.0 ms passed; predicted downtime 2130.0 ms vs limit 300.0 ms; staying on the source"))
        #expect(s.iteration == 10)
    }

    @Test func waitPolicyWithoutDeadlineAbortsAtMaxIterations() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(policy: .wait, deadline: nil, maxIterations: 5), start: clock.now)
        for i in 1...4 { #expect(Self.hopelessRound(&s, &clock) == iterating(i + 1)) }
        let a = Self.hopelessRound(&s, &clock)
        guard case .abort(let reason) = a else { Issue.record("expected abort, got \(a)"); return }
        #expect(reason.contains("reached the maximum of 5 iterations"))
    }

    @Test func maxIterationsCountsAsNonConvergenceUnderSwitchover() {
        var clock = ManualClock()
        // Shrinking fast enough not to stall, but never fitting the limit.
        var s = PrecopyScheduler(
            configuration: .init(policy: .switchover, deadline: nil, maxIterations: 2, minimumRoundsBeforeJudging: 10),
            start: clock.now)
        #expect(round(&s, &clock, sent: 100 * MiB, over: .seconds(1), dirty: 90 * MiB) == iterating(2))
        #expect(round(&s, &clock, sent: 90 * MiB, over: .milliseconds(900), dirty: 80 * MiB) == .switchover(reason: .nonConvergencePolicy))
    }

    @Test func abortPolicyAbortsAtDeadlineBeforeJudging() {
        var clock = ManualClock()
        var s = PrecopyScheduler(
            configuration: .init(policy: .abort, deadline: .milliseconds(1500)), start: clock.now)
        #expect(Self.hopelessRound(&s, &clock) == iterating(2))
        #expect(Self.hopelessRound(&s, &clock) == .abort(reason: "deadline of 1500.0 ms passed; predicted downtime 2130.0 ms vs limit 300.0 ms; staying on the source"))
    }

    @Test func switchoverPolicySwitchesAtDeadline() {
        var clock = ManualClock()
        var s = PrecopyScheduler(
            configuration: .init(policy: .switchover, deadline: .seconds(2), minimumRoundsBeforeJudging: 100),
            start: clock.now)
        #expect(Self.hopelessRound(&s, &clock) == iterating(2))
        #expect(Self.hopelessRound(&s, &clock) == .switchover(reason: .deadlineReached))
    }

    @Test func stalledRemainingIsNonConvergence() {
        // 1000 MiB/s link, dirty rate well below it, but remaining does not shrink.
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(policy: .abort), start: clock.now)
        for (i, dirty) in ([500, 490, 480] as [UInt64]).enumerated() {
            #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: dirty * MiB) == iterating(i + 2))
        }
        // Best of last 3 = 476 >= 0.95 * 500 = 475 -> stalled.
        let a = round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 476 * MiB)
        guard case .abort(let reason) = a else { Issue.record("expected abort, got \(a)"); return }
        #expect(reason.hasPrefix("migration does not converge (remaining bytes did not shrink over the last 3 rounds)"))
    }

    @Test func shrinkingRemainingIsNotStalled() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(policy: .abort), start: clock.now)
        for (i, dirty) in ([500, 490, 480, 474] as [UInt64]).enumerated() {  // 474 < 475
            #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: dirty * MiB) == iterating(i + 2))
        }
        #expect(s.nonConvergenceReason == nil)
    }

    @Test func policyParsesFromString() {
        #expect(NonConvergencePolicy(rawValue: "wait") == .wait)
        #expect(NonConvergencePolicy(rawValue: "switchover") == .switchover)
        #expect(NonConvergencePolicy(rawValue: "abort") == .abort)
        #expect(NonConvergencePolicy(rawValue: "Abort") == nil)
        #expect(NonConvergencePolicy(rawValue: "") == nil)
    }
}

@Suite("Switchover ack")
struct SwitchoverAckTests {
    @Test func gateHoldsUntilEveryDeviceAcks() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(registeredDevices: [1]), start: clock.now)
        s.registerDevice(id: 2)
        #expect(s.pendingAcks == [1, 2])
        // The bulk round, then two rounds at 1000 MiB/s: the two samples the default needs.
        #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 10 * MiB) == iterating(2))
        #expect(round(&s, &clock, sent: 10 * MiB, over: .milliseconds(10), dirty: 10 * MiB) == iterating(3))
        // Prediction fits (130 + 10 ms), but acks are missing: the next round still runs.
        let a3 = round(&s, &clock, sent: 10 * MiB, over: .milliseconds(10), dirty: 10 * MiB)
        #expect(a3 == .waitForSwitchoverAck(plan(4)))
        #expect(a3.roundPlan == plan(4))
        s.switchoverAcknowledged(deviceID: 1)
        #expect(s.pendingAcks == [2])
        #expect(round(&s, &clock, sent: 10 * MiB, over: .milliseconds(10), dirty: 10 * MiB) == .waitForSwitchoverAck(plan(5)))
        s.switchoverAcknowledged(deviceID: 2)
        #expect(s.pendingAcks == [])
        #expect(round(&s, &clock, sent: 10 * MiB, over: .milliseconds(10), dirty: 10 * MiB) == .switchover(reason: .converged))
        #expect(s.iteration == 5)
    }

    @Test func gateCanBeDisabled() {
        var clock = ManualClock()
        var s = PrecopyScheduler(
            configuration: .init(requireSwitchoverAck: false, registeredDevices: [1, 2]), start: clock.now)
        #expect(s.pendingAcks == [])
        #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 10 * MiB) == iterating(2))
        #expect(round(&s, &clock, sent: 10 * MiB, over: .milliseconds(10), dirty: 10 * MiB) == iterating(3))
        #expect(round(&s, &clock, sent: 10 * MiB, over: .milliseconds(10), dirty: 10 * MiB) == .switchover(reason: .converged))
    }

    @Test func switchoverPolicyNeverSkipsTheAck() {
        var clock = ManualClock()
        var s = PrecopyScheduler(
            configuration: .init(policy: .switchover, deadline: .seconds(4), registeredDevices: [3]),
            start: clock.now)
        for i in 1...2 {
            #expect(NonConvergenceTests.hopelessRound(&s, &clock) == iterating(i + 1))
        }
        // Non-converging with .switchover, but device 3 has not acked.
        #expect(NonConvergenceTests.hopelessRound(&s, &clock) == .waitForSwitchoverAck(plan(4)))
        #expect(NonConvergenceTests.hopelessRound(&s, &clock) == .abort(reason: "deadline of 4000.0 ms passed; predicted downtime 2130.0 ms vs limit 300.0 ms; switchover-ack missing from devices [3]; staying on the source"))
    }
}

@Suite("Bandwidth and costs")
struct BandwidthTests {
    @Test func slowerReceiverLimitsBandwidth() {
        var s = PrecopyScheduler(configuration: .init(defaultFixedCosts: .zero), start: .zero)
        s.recordRound(iteration: 2, bytes: 1000 * MiB, wireBytes: 1000 * MiB, duration: .seconds(1))
        s.updateRemaining(deviceID: 0, dirtyBytes: 40 * MiB)
        #expect(s.predictedDowntime == .milliseconds(40))
        let used1 = s.recordReceiverLoadRate(round: 2, bytesPerSecond: Double(200 * MiB))
        #expect(used1)
        #expect(s.senderRate == Double(1000 * MiB))
        #expect(s.receiverRate == Double(200 * MiB))
        #expect(s.bandwidthBytesPerSecond == Double(200 * MiB))
        #expect(s.predictedDowntime == .milliseconds(200))
        let used2 = s.recordReceiverLoadRate(round: 3, bytesPerSecond: Double(100 * MiB))
        #expect(used2)  // averaged with weight 1/2
        #expect(s.receiverRate == Double(150 * MiB))
        #expect(s.bandwidthBytesPerSecond == Double(150 * MiB))
    }

    @Test func fasterReceiverDoesNotRaiseBandwidth() {
        var s = PrecopyScheduler(configuration: .init(), start: .zero)
        s.recordRound(iteration: 2, bytes: 100 * MiB, wireBytes: 100 * MiB, duration: .seconds(1))
        s.recordReceiverLoadRate(round: 2, bytesPerSecond: Double(900 * MiB))
        #expect(s.bandwidthBytesPerSecond == Double(100 * MiB))
    }

    @Test func senderRateIsTimeWeighted() {
        var s = PrecopyScheduler(configuration: .init(rateTimeConstant: .seconds(1)), start: .zero)
        s.recordRound(iteration: 2, bytes: 100 * MiB, wireBytes: 0, duration: .seconds(1))
        s.recordRound(iteration: 3, bytes: 300 * MiB, wireBytes: 0, duration: .seconds(1))  // weight 1/(1+1)
        #expect(s.senderRate == Double(200 * MiB))
        s.recordRound(iteration: 4, bytes: 0, wireBytes: 0, duration: .zero)  // no duration: no sample
        #expect(s.senderRate == Double(200 * MiB))
    }

    @Test func fixedCostsCanPushPredictionOverLimit() {
        var clock = ManualClock()
        // The old defaults (no margin, one sample): 310 ms against the limit itself.
        let config = SchedulerConfiguration(downtimeLimit: .milliseconds(300), defaultFixedCosts: .zero,
                                            predictionMargin: 0, minimumBandwidthSamples: 1)
        var fits = PrecopyScheduler(configuration: config, start: clock.now)
        var tooSlow = PrecopyScheduler(configuration: config, start: clock.now)
        tooSlow.recordFixedCost(.stopTransition, .milliseconds(100))
        tooSlow.recordFixedCost(.configState, .milliseconds(50))
        tooSlow.recordFixedCost(.destinationResume, .milliseconds(40))
        tooSlow.recordFixedCost(.roundTrip, .milliseconds(20))
        #expect(tooSlow.fixedCosts.total == .milliseconds(210))
        var c2 = clock
        // After the bulk round, 100 MiB remaining at 1000 MiB/s = 100 ms.
        #expect(round(&fits, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 100 * MiB) == iterating(2))
        #expect(round(&fits, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 100 * MiB) == .switchover(reason: .converged))
        #expect(fits.predictedDowntime == .milliseconds(100))
        #expect(round(&tooSlow, &c2, sent: 1000 * MiB, over: .seconds(1), dirty: 100 * MiB) == iterating(2))
        #expect(round(&tooSlow, &c2, sent: 1000 * MiB, over: .seconds(1), dirty: 100 * MiB) == iterating(3))
        #expect(tooSlow.predictedDowntime == .milliseconds(310))
    }

    @Test func defaultsApplyUntilMeasuredAndLatestMeasurementWins() {
        var s = PrecopyScheduler(configuration: .init(), start: .zero)
        #expect(s.fixedCosts == .conservative)
        #expect(s.fixedCosts.total == .milliseconds(130))
        s.recordFixedCost(.roundTrip, .milliseconds(2))
        s.recordFixedCost(.roundTrip, .milliseconds(4))
        #expect(s.fixedCosts.roundTrip == .milliseconds(4))
        #expect(s.fixedCosts.total == .milliseconds(124))
    }

    @Test func throttledRoundsFallBackToTheSenderRateUntilAProbe() {
        var clock = ManualClock()
        let limit = 100 * MiB  // probes: 1 MiB ... 25 MiB
        var s = PrecopyScheduler(
            configuration: .init(maxBandwidth: limit, defaultFixedCosts: .zero, minimumBandwidthSamples: 1), start: clock.now)
        #expect(s.precopyRateLimit == limit)
        #expect(s.firstRound() == plan(1, limit: limit))
        #expect(round(&s, &clock, sent: 400 * MiB, over: .seconds(4), dirty: 300 * MiB) == iterating(2, limit: limit))
        // Throttled round, no unthrottled sample yet: fall back to the measured rate.
        #expect(round(&s, &clock, sent: 300 * MiB, over: .seconds(3), dirty: 200 * MiB) == iterating(3, limit: limit))
        #expect(s.linkCapacity == nil)
        #expect(s.bandwidthSamples == 0)
        #expect(s.bandwidthBytesPerSecond == Double(100 * MiB))
        #expect(s.predictedDowntime == .seconds(2))
        // Round 4 may be a probe, but 100 MiB is more than a quarter second of the cap.
        #expect(round(&s, &clock, sent: 200 * MiB, over: .seconds(2), dirty: 100 * MiB) == iterating(4, limit: limit))
        // 16 MiB fits: round 5 is a probe, unthrottled.
        #expect(round(&s, &clock, sent: 100 * MiB, over: .seconds(1), dirty: 16 * MiB) == iterating(5, limit: limit, probe: true))
        #expect(s.lastProbe == 5)
        // The probe (16 MiB in 1/64 s) shows the link does 1024 MiB/s; the prediction uses it.
        #expect(round(&s, &clock, sent: 16 * MiB, over: .microseconds(15625), dirty: 512 * MiB) == iterating(6, limit: limit))
        #expect(s.linkCapacity == Double(1024 * MiB))
        #expect(s.bandwidthSamples == 1)
        #expect(s.bandwidthBytesPerSecond == Double(1024 * MiB))
        #expect(s.predictedDowntime == .milliseconds(500))
        // Throttled again; the throttled round leaves the link capacity alone.
        #expect(round(&s, &clock, sent: 100 * MiB, over: .seconds(1), dirty: 256 * MiB) == .switchover(reason: .converged))
        #expect(s.linkCapacity == Double(1024 * MiB))
        #expect(s.bandwidthSamples == 1)
        #expect(s.predictedDowntime == .milliseconds(250))
    }

    @Test func unthrottledSendsFeedLinkCapacity() {
        var s = PrecopyScheduler(configuration: .init(), start: .zero)
        s.recordRound(iteration: 2, bytes: 300 * MiB, wireBytes: 100 * MiB, duration: .seconds(1))
        #expect(s.linkCapacity == Double(300 * MiB))
        #expect(s.totalWireBytes == 100 * MiB)
    }
}

@Suite("Time")
struct InstantTests {
    @Test func arithmetic() {
        let a = Instant(nanoseconds: 1_000)
        #expect(a + .microseconds(2) == Instant(nanoseconds: 3_000))
        #expect((a + .microseconds(2)) - a == .microseconds(2))
        #expect(a - Instant(nanoseconds: 4_000) == .nanoseconds(-3_000))
        #expect(a + .nanoseconds(-5_000) == .zero)
        #expect(Instant(nanoseconds: .max - 1) + .seconds(1) == Instant(nanoseconds: .max))
        #expect(a < a + .nanoseconds(1))
    }

    @Test func formatting() {
        #expect(formatDuration(.milliseconds(2130)) == "2130.0 ms")
        #expect(formatDuration(.microseconds(1250)) == "1.3 ms")
        #expect(formatRate(Double(100 * MiB)) == "100.0 MiB/s")
        #expect(formatRate(nil) == "unknown")
    }
}

@Suite struct IterationCapAndDeadlineTests {
    @Test func iterationCapDoesNotPreemptTheDeadline() {
        // Many tiny rounds before the deadline: the cap of 5 must not end the wait early.
        var now = Instant(nanoseconds: 1_000_000_000)
        var s = PrecopyScheduler(configuration: .init(policy: .wait, deadline: .seconds(10), maxIterations: 5), start: now)
        for i in 1...50 {
            s.recordRound(iteration: i, bytes: 1 << 30, wireBytes: 1 << 30, duration: .milliseconds(100))
            s.updateRemaining(deviceID: 0, dirtyBytes: 10 << 30)  // never fits the limit
            now = now + .milliseconds(100)
            let a = s.nextAction(now: now)
            #expect(a == iterating(i + 1), "round \(i) at \(now): \(a)")
        }
        // Past the deadline the policy applies.
        now = now + .seconds(6)
        s.recordRound(iteration: 51, bytes: 1 << 30, wireBytes: 1 << 30, duration: .milliseconds(100))
        let a = s.nextAction(now: now)
        guard case .abort(let reason) = a else { Issue.record("expected abort at the deadline, got \(a)"); return }
        #expect(reason.contains("deadline"))
    }
}

@Suite struct BandwidthSampleTests {
    @Test func switchoverWaitsForTheRequiredSamplesUnlessNothingRemains() {
        var now = Instant(nanoseconds: 1_000_000_000)
        var s = PrecopyScheduler(configuration: .init(downtimeLimit: .milliseconds(300), minimumBandwidthSamples: 2), start: now)
        // The bulk round is no sample.
        s.recordRound(iteration: 1, bytes: 100 << 20, wireBytes: 100 << 20, duration: .milliseconds(100))
        s.updateRemaining(deviceID: 0, dirtyBytes: 1 << 20)
        now = now + .milliseconds(100)
        #expect(s.bandwidthSamples == 0)
        #expect(s.nextAction(now: now) == iterating(2))
        // One round's rate: the prediction fits, but one sample is not enough.
        s.recordRound(iteration: 2, bytes: 100 << 20, wireBytes: 100 << 20, duration: .milliseconds(100))
        now = now + .milliseconds(100)
        #expect(s.bandwidthSamples == 1)
        #expect(s.nextAction(now: now) == iterating(3))
        // The second sample allows it.
        s.recordRound(iteration: 3, bytes: 1 << 20, wireBytes: 1 << 20, duration: .milliseconds(2))
        now = now + .milliseconds(2)
        #expect(s.nextAction(now: now) == .switchover(reason: .converged))

        // Nothing remaining needs no bandwidth at all.
        var t = PrecopyScheduler(configuration: .init(downtimeLimit: .milliseconds(300), minimumBandwidthSamples: 2), start: now)
        t.updateRemaining(deviceID: 0, dirtyBytes: 0)
        #expect(t.nextAction(now: now + .milliseconds(5)) == .switchover(reason: .nothingToSend))
    }
}

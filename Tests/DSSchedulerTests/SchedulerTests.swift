import Testing
@testable import DSScheduler

let MiB: UInt64 = 1 << 20

/// A clock the test moves by hand.
struct ManualClock {
    var now = Instant(nanoseconds: 1_000_000_000)  // arbitrary non-zero origin
    mutating func advance(_ d: Duration) { now = now + d }
}

/// One pre-copy round: `sent` bytes moved over `over`, after which device 0
/// has `dirty` dirty bytes; the clock advances by `over` and the round closes.
func round(
    _ s: inout PrecopyScheduler, _ clock: inout ManualClock,
    sent: UInt64, over: Duration, dirty: UInt64, stopCopyOnly: UInt64 = 0
) -> Action {
    s.recordSent(bytes: sent, wireBytes: sent / 2, over: over)
    clock.advance(over)
    s.updateRemaining(deviceID: 0, dirtyBytes: dirty, stopCopyOnlyBytes: stopCopyOnly)
    return s.nextAction(now: clock.now)
}

func approx(_ a: Double?, _ b: Double, tolerance: Double = 1e-6) -> Bool {
    guard let a else { return false }
    return abs(a - b) <= tolerance * max(1, abs(b))
}

@Suite("Convergence")
struct ConvergenceTests {
    @Test func convergesInTwoRoundsWithLowDirtyRate() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(downtimeLimit: .milliseconds(300)), start: clock.now)
        // 1000 MiB/s link; 200 MiB dirtied in the 1 s bulk round.
        let a1 = round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 200 * MiB)
        #expect(a1 == .iterate(rateLimit: nil))
        #expect(s.predictedDowntime == .milliseconds(330))  // 130 ms defaults + 200 ms
        let a2 = round(&s, &clock, sent: 200 * MiB, over: .milliseconds(200), dirty: 20 * MiB)
        #expect(a2 == .switchover(reason: .converged))
        #expect(s.iteration == 2)
        #expect(s.predictedDowntime == .milliseconds(150))
        #expect(s.remainingBytes == 20 * MiB)
        #expect(approx(s.bandwidthBytesPerSecond, Double(1000 * MiB)))
        // Dirty-rate samples 200 MiB/s (1 s) then 100 MiB/s (0.2 s, weight 1/6).
        #expect(approx(s.dirtyRateBytesPerSecond, Double(MiB) * (200 - 100.0 / 6)))
        #expect(s.history.map(\.iteration) == [1, 2])
        #expect(s.history.map(\.sentBytes) == [1000 * MiB, 200 * MiB])
        #expect(s.history.map(\.wireBytes) == [500 * MiB, 100 * MiB])
        #expect(s.history.map(\.remainingBytes) == [200 * MiB, 20 * MiB])
        #expect(s.history.map(\.predictedDowntime) == [.milliseconds(330), .milliseconds(150)])
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
        #expect(s.nextAction(now: Instant(nanoseconds: 1_000)) == .iterate(rateLimit: nil))
    }

    @Test func remainingSumsDirtyAndStopCopyOnlyOverDevices() {
        var s = PrecopyScheduler(configuration: .init(defaultFixedCosts: .zero), start: .zero)
        s.updateRemaining(deviceID: 1, dirtyBytes: 10 * MiB, stopCopyOnlyBytes: 5 * MiB)
        s.updateRemaining(deviceID: 2, dirtyBytes: 20 * MiB, stopCopyOnlyBytes: 15 * MiB)
        s.updateRemaining(deviceID: 1, dirtyBytes: 30 * MiB, stopCopyOnlyBytes: 5 * MiB)  // replaces
        #expect(s.dirtyBytes == 50 * MiB)
        #expect(s.stopCopyOnlyBytes == 20 * MiB)
        #expect(s.remainingBytes == 70 * MiB)
        s.recordUnthrottledSample(bytes: 100 * MiB, over: .seconds(1))
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
        #expect(Self.hopelessRound(&s, &clock) == .iterate(rateLimit: nil))
        #expect(Self.hopelessRound(&s, &clock) == .iterate(rateLimit: nil))
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
        #expect(Self.hopelessRound(&s, &clock) == .iterate(rateLimit: nil))
        #expect(Self.hopelessRound(&s, &clock) == .iterate(rateLimit: nil))
        #expect(Self.hopelessRound(&s, &clock) == .switchover(reason: .nonConvergencePolicy))
        #expect(s.predictedDowntime == .milliseconds(2130))
    }

    @Test func waitPolicyIteratesUntilDeadlineThenAborts() {
        var clock = ManualClock()
        var s = PrecopyScheduler(
            configuration: .init(policy: .wait, deadline: .seconds(10)), start: clock.now)
        for i in 1...9 {
            #expect(Self.hopelessRound(&s, &clock) == .iterate(rateLimit: nil), "round \(i)")
        }
        #expect(Self.hopelessRound(&s, &clock) == .abort(reason: "deadline of 10000.0 ms passed; predicted downtime 2130.0 ms vs limit 300.0 ms; staying on the source"))
        #expect(s.iteration == 10)
    }

    @Test func waitPolicyWithoutDeadlineAbortsAtMaxIterations() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(policy: .wait, maxIterations: 5), start: clock.now)
        for _ in 1...4 { #expect(Self.hopelessRound(&s, &clock) == .iterate(rateLimit: nil)) }
        let a = Self.hopelessRound(&s, &clock)
        guard case .abort(let reason) = a else { Issue.record("expected abort, got \(a)"); return }
        #expect(reason.contains("reached the maximum of 5 iterations"))
    }

    @Test func maxIterationsCountsAsNonConvergenceUnderSwitchover() {
        var clock = ManualClock()
        // Shrinking fast enough not to stall, but never fitting the limit.
        var s = PrecopyScheduler(
            configuration: .init(policy: .switchover, maxIterations: 2, minimumRoundsBeforeJudging: 10),
            start: clock.now)
        #expect(round(&s, &clock, sent: 100 * MiB, over: .seconds(1), dirty: 90 * MiB) == .iterate(rateLimit: nil))
        #expect(round(&s, &clock, sent: 90 * MiB, over: .milliseconds(900), dirty: 80 * MiB) == .switchover(reason: .nonConvergencePolicy))
    }

    @Test func abortPolicyAbortsAtDeadlineBeforeJudging() {
        var clock = ManualClock()
        var s = PrecopyScheduler(
            configuration: .init(policy: .abort, deadline: .milliseconds(1500)), start: clock.now)
        #expect(Self.hopelessRound(&s, &clock) == .iterate(rateLimit: nil))
        #expect(Self.hopelessRound(&s, &clock) == .abort(reason: "deadline of 1500.0 ms passed; predicted downtime 2130.0 ms vs limit 300.0 ms; staying on the source"))
    }

    @Test func switchoverPolicySwitchesAtDeadline() {
        var clock = ManualClock()
        var s = PrecopyScheduler(
            configuration: .init(policy: .switchover, deadline: .seconds(2), minimumRoundsBeforeJudging: 100),
            start: clock.now)
        #expect(Self.hopelessRound(&s, &clock) == .iterate(rateLimit: nil))
        #expect(Self.hopelessRound(&s, &clock) == .switchover(reason: .deadlineReached))
    }

    @Test func stalledRemainingIsNonConvergence() {
        // 1000 MiB/s link, dirty rate well below it, but remaining does not shrink.
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(policy: .abort), start: clock.now)
        for dirty: UInt64 in [500, 490, 480] {
            #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: dirty * MiB) == .iterate(rateLimit: nil))
        }
        // Best of last 3 = 476 >= 0.95 * 500 = 475 -> stalled.
        let a = round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 476 * MiB)
        guard case .abort(let reason) = a else { Issue.record("expected abort, got \(a)"); return }
        #expect(reason.hasPrefix("migration does not converge (remaining bytes did not shrink over the last 3 rounds)"))
    }

    @Test func shrinkingRemainingIsNotStalled() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(policy: .abort), start: clock.now)
        for dirty: UInt64 in [500, 490, 480, 474] {  // 474 < 475
            #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: dirty * MiB) == .iterate(rateLimit: nil))
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
        // Prediction fits (130 + 10 ms) from the first round on.
        #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 10 * MiB) == .waitForSwitchoverAck)
        s.switchoverAcknowledged(deviceID: 1)
        #expect(s.pendingAcks == [2])
        #expect(round(&s, &clock, sent: 10 * MiB, over: .milliseconds(10), dirty: 10 * MiB) == .waitForSwitchoverAck)
        s.switchoverAcknowledged(deviceID: 2)
        #expect(s.pendingAcks == [])
        #expect(round(&s, &clock, sent: 10 * MiB, over: .milliseconds(10), dirty: 10 * MiB) == .switchover(reason: .converged))
        #expect(s.iteration == 3)
    }

    @Test func gateCanBeDisabled() {
        var clock = ManualClock()
        var s = PrecopyScheduler(
            configuration: .init(requireSwitchoverAck: false, registeredDevices: [1, 2]), start: clock.now)
        #expect(s.pendingAcks == [])
        #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 10 * MiB) == .switchover(reason: .converged))
    }

    @Test func switchoverPolicyNeverSkipsTheAck() {
        var clock = ManualClock()
        var s = PrecopyScheduler(
            configuration: .init(policy: .switchover, deadline: .seconds(4), registeredDevices: [3]),
            start: clock.now)
        for _ in 1...2 {
            #expect(NonConvergenceTests.hopelessRound(&s, &clock) == .iterate(rateLimit: nil))
        }
        // Non-converging with .switchover, but device 3 has not acked.
        #expect(NonConvergenceTests.hopelessRound(&s, &clock) == .waitForSwitchoverAck)
        #expect(NonConvergenceTests.hopelessRound(&s, &clock) == .abort(reason: "deadline of 4000.0 ms passed; predicted downtime 2130.0 ms vs limit 300.0 ms; switchover-ack missing from devices [3]; staying on the source"))
    }
}

@Suite("Bandwidth and costs")
struct BandwidthTests {
    @Test func slowerReceiverLimitsBandwidth() {
        var s = PrecopyScheduler(configuration: .init(defaultFixedCosts: .zero), start: .zero)
        s.recordSent(bytes: 1000 * MiB, wireBytes: 1000 * MiB, over: .seconds(1))
        s.updateRemaining(deviceID: 0, dirtyBytes: 40 * MiB)
        #expect(s.predictedDowntime == .milliseconds(40))
        s.recordReceiverLoadRate(bytesPerSecond: Double(200 * MiB))
        #expect(s.senderRate == Double(1000 * MiB))
        #expect(s.receiverRate == Double(200 * MiB))
        #expect(s.bandwidthBytesPerSecond == Double(200 * MiB))
        #expect(s.predictedDowntime == .milliseconds(200))
        s.recordReceiverLoadRate(bytesPerSecond: Double(100 * MiB))  // averaged with weight 1/2
        #expect(s.receiverRate == Double(150 * MiB))
        #expect(s.bandwidthBytesPerSecond == Double(150 * MiB))
    }

    @Test func fasterReceiverDoesNotRaiseBandwidth() {
        var s = PrecopyScheduler(configuration: .init(), start: .zero)
        s.recordSent(bytes: 100 * MiB, wireBytes: 100 * MiB, over: .seconds(1))
        s.recordReceiverLoadRate(bytesPerSecond: Double(900 * MiB))
        #expect(s.bandwidthBytesPerSecond == Double(100 * MiB))
    }

    @Test func senderRateIsTimeWeighted() {
        var s = PrecopyScheduler(configuration: .init(rateTimeConstant: .seconds(1)), start: .zero)
        s.recordSent(bytes: 100 * MiB, wireBytes: 0, over: .seconds(1))
        s.recordSent(bytes: 300 * MiB, wireBytes: 0, over: .seconds(1))  // weight 1/(1+1)
        #expect(s.senderRate == Double(200 * MiB))
        s.recordSent(bytes: 0, wireBytes: 0, over: .zero)  // no duration: no sample
        #expect(s.senderRate == Double(200 * MiB))
    }

    @Test func fixedCostsCanPushPredictionOverLimit() {
        var clock = ManualClock()
        let config = SchedulerConfiguration(downtimeLimit: .milliseconds(300), defaultFixedCosts: .zero)
        var fits = PrecopyScheduler(configuration: config, start: clock.now)
        var tooSlow = PrecopyScheduler(configuration: config, start: clock.now)
        tooSlow.recordFixedCost(.stopTransition, .milliseconds(100))
        tooSlow.recordFixedCost(.configState, .milliseconds(50))
        tooSlow.recordFixedCost(.destinationResume, .milliseconds(40))
        tooSlow.recordFixedCost(.roundTrip, .milliseconds(20))
        #expect(tooSlow.fixedCosts.total == .milliseconds(210))
        var c2 = clock
        // 100 MiB remaining at 1000 MiB/s = 100 ms.
        #expect(round(&fits, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 100 * MiB) == .switchover(reason: .converged))
        #expect(fits.predictedDowntime == .milliseconds(100))
        #expect(round(&tooSlow, &c2, sent: 1000 * MiB, over: .seconds(1), dirty: 100 * MiB) == .iterate(rateLimit: nil))
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

    @Test func throttleIsReportedButDoesNotReducePredictedBandwidth() {
        var clock = ManualClock()
        let limit = 100 * MiB
        var s = PrecopyScheduler(
            configuration: .init(maxBandwidth: limit, defaultFixedCosts: .zero), start: clock.now)
        #expect(s.precopyRateLimit == limit)
        // Throttled round, no unthrottled sample yet: fall back to measured rate.
        #expect(round(&s, &clock, sent: 100 * MiB, over: .seconds(1), dirty: 500 * MiB) == .iterate(rateLimit: limit))
        #expect(s.linkCapacity == nil)
        #expect(s.bandwidthBytesPerSecond == Double(100 * MiB))
        #expect(s.predictedDowntime == .seconds(5))
        // An unthrottled probe shows the link does 1000 MiB/s.
        s.recordUnthrottledSample(bytes: 1000 * MiB, over: .seconds(1))
        #expect(s.linkCapacity == Double(1000 * MiB))
        #expect(s.senderRate == Double(100 * MiB))
        #expect(s.bandwidthBytesPerSecond == Double(1000 * MiB))
        #expect(s.predictedDowntime == .milliseconds(500))
        // Still throttled pre-copy; the prediction uses the link capacity.
        #expect(round(&s, &clock, sent: 100 * MiB, over: .seconds(1), dirty: 400 * MiB) == .iterate(rateLimit: limit))
        #expect(s.predictedDowntime == .milliseconds(400))
        #expect(s.bandwidthBytesPerSecond == Double(1000 * MiB))
        #expect(round(&s, &clock, sent: 100 * MiB, over: .seconds(1), dirty: 250 * MiB) == .switchover(reason: .converged))
        #expect(s.predictedDowntime == .milliseconds(250))
    }

    @Test func unthrottledSendsFeedLinkCapacity() {
        var s = PrecopyScheduler(configuration: .init(), start: .zero)
        s.recordSent(bytes: 300 * MiB, wireBytes: 100 * MiB, over: .seconds(1))
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
            s.recordSent(bytes: 1 << 30, wireBytes: 1 << 30, over: .milliseconds(100))
            s.updateRemaining(deviceID: 0, dirtyBytes: 10 << 30)  // never fits the limit
            now = now + .milliseconds(100)
            let a = s.nextAction(now: now)
            #expect(a == .iterate(rateLimit: nil), "round \(i) at \(now): \(a)")
        }
        // Past the deadline the policy applies.
        now = now + .seconds(6)
        s.recordSent(bytes: 1 << 30, wireBytes: 1 << 30, over: .milliseconds(100))
        let a = s.nextAction(now: now)
        guard case .abort(let reason) = a else { Issue.record("expected abort at the deadline, got \(a)"); return }
        #expect(reason.contains("deadline"))
    }
}

@Suite struct BandwidthSampleTests {
    @Test func switchoverWaitsForTheRequiredSamplesUnlessNothingRemains() {
        var now = Instant(nanoseconds: 1_000_000_000)
        var s = PrecopyScheduler(configuration: .init(downtimeLimit: .milliseconds(300), minimumBandwidthSamples: 2), start: now)
        // One round's rate: the prediction fits, but one sample is not enough.
        s.recordSent(bytes: 100 << 20, wireBytes: 100 << 20, over: .milliseconds(100))
        s.updateRemaining(deviceID: 0, dirtyBytes: 1 << 20)
        now = now + .milliseconds(100)
        #expect(s.bandwidthSamples == 1)
        #expect(s.nextAction(now: now) == .iterate(rateLimit: nil))
        // The second sample allows it.
        s.recordSent(bytes: 1 << 20, wireBytes: 1 << 20, over: .milliseconds(2))
        now = now + .milliseconds(2)
        #expect(s.nextAction(now: now) == .switchover(reason: .converged))

        // Nothing remaining needs no bandwidth at all.
        var t = PrecopyScheduler(configuration: .init(downtimeLimit: .milliseconds(300), minimumBandwidthSamples: 2), start: now)
        t.updateRemaining(deviceID: 0, dirtyBytes: 0)
        #expect(t.nextAction(now: now + .milliseconds(5)) == .switchover(reason: .nothingToSend))
    }
}

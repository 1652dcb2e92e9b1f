import Testing
@testable import DSScheduler

/// The scheduler's round plans: probes, samples, load-rate filtering, pacing.
@Suite("Round plans")
struct RoundPlanTests {
    /// The pre-copy cap of these tests: probes are 1 MiB ... 10 MiB (a quarter second of it).
    static let cap = 40 * MiB

    /// A round throttled to the cap (5 MiB in 125 ms) that leaves `dirty` bytes.
    static func throttled(_ s: inout PrecopyScheduler, _ c: inout ManualClock, dirty: UInt64) -> Action {
        round(&s, &c, sent: 5 * MiB, over: .milliseconds(125), dirty: dirty)
    }

    @Test func everyFourthRoundWithinBoundsIsAnUnthrottledProbe() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(maxBandwidth: Self.cap), start: clock.now)
        #expect(s.firstRound() == plan(1, limit: Self.cap))
        // Rounds 2 and 3 come too soon after the start, however small.
        #expect(Self.throttled(&s, &clock, dirty: 5 * MiB) == iterating(2, limit: Self.cap))
        #expect(Self.throttled(&s, &clock, dirty: 5 * MiB) == iterating(3, limit: Self.cap))
        let a3 = Self.throttled(&s, &clock, dirty: 5 * MiB)
        #expect(a3 == .iterate(RoundPlan(iteration: 4, rateLimit: nil, probe: true, minimumDuration: .milliseconds(20))))
        #expect(s.lastProbe == 4)
        // The throttled rounds fed only the sender rate.
        #expect(s.linkCapacity == nil)
        #expect(s.bandwidthSamples == 0)
        #expect(s.senderRate == Double(40 * MiB))
        // The probe (8 MiB in 1/16 s) samples the link.
        #expect(round(&s, &clock, sent: 8 * MiB, over: .microseconds(62500), dirty: 5 * MiB) == iterating(5, limit: Self.cap))
        #expect(s.linkCapacity == Double(128 * MiB))
        #expect(s.bandwidthSamples == 1)
        // Three throttled rounds, then the next probe.
        #expect(Self.throttled(&s, &clock, dirty: 5 * MiB) == iterating(6, limit: Self.cap))
        #expect(Self.throttled(&s, &clock, dirty: 5 * MiB) == iterating(7, limit: Self.cap))
        #expect(Self.throttled(&s, &clock, dirty: 5 * MiB) == iterating(8, limit: Self.cap, probe: true))
        #expect(s.linkCapacity == Double(128 * MiB))
        #expect(s.bandwidthSamples == 1)
    }

    @Test(arguments: zip([MiB - 1, MiB, 10 * MiB, 10 * MiB + 1], [false, true, true, false]))
    func probeSizeBounds(dirty: UInt64, probe: Bool) {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(maxBandwidth: Self.cap), start: clock.now)
        _ = Self.throttled(&s, &clock, dirty: dirty)
        _ = Self.throttled(&s, &clock, dirty: dirty)
        #expect(Self.throttled(&s, &clock, dirty: dirty) == iterating(4, limit: Self.cap, probe: probe))
        #expect(s.lastProbe == (probe ? 4 : 0))
    }

    @Test func aMissedProbeComesInTheNextRoundThatFits() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(maxBandwidth: Self.cap), start: clock.now)
        for n in 2...4 { #expect(Self.throttled(&s, &clock, dirty: 50 * MiB) == iterating(n, limit: Self.cap)) }
        #expect(Self.throttled(&s, &clock, dirty: 5 * MiB) == iterating(5, limit: Self.cap, probe: true))
        for n in 6...8 { #expect(Self.throttled(&s, &clock, dirty: 5 * MiB) == iterating(n, limit: Self.cap)) }
        #expect(Self.throttled(&s, &clock, dirty: 5 * MiB) == iterating(9, limit: Self.cap, probe: true))
    }

    @Test func noProbesWithoutACap() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(), start: clock.now)
        #expect(s.firstRound() == plan(1))
        // 10 MiB/s rounds leaving probe-sized 5 MiB: never fits, never a probe.
        for n in 2...10 {
            #expect(round(&s, &clock, sent: MiB, over: .milliseconds(100), dirty: 5 * MiB) == iterating(n))
        }
        #expect(s.lastProbe == 0)
        #expect(s.bandwidthSamples == 8)  // rounds 2...9
    }

    @Test func probeMaximumIsAQuarterSecondOfTheCapRoundedDown() {
        let c = SchedulerConfiguration()
        #expect(c.probeMaximumBytes(cap: 40 * MiB + 3) == 10 * MiB)
        #expect(c.probeMaximumBytes(cap: .max) == UInt64.max / 4)
        #expect(SchedulerConfiguration(probeMaximumDuration: .seconds(1)).probeMaximumBytes(cap: .max) == UInt64.max)
        #expect(SchedulerConfiguration(probeMaximumDuration: .seconds(2)).probeMaximumBytes(cap: .max) == UInt64.max)
        #expect(SchedulerConfiguration(probeMaximumDuration: .zero).probeMaximumBytes(cap: 40 * MiB) == 0)
    }

    @Test func roundOneIsNoBandwidthSample() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(), start: clock.now)
        #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 100 * MiB) == iterating(2))
        #expect(s.senderRate == nil)
        #expect(s.linkCapacity == nil)
        #expect(s.bandwidthSamples == 0)
        #expect(s.predictedDowntime == nil)
        let used1 = s.recordReceiverLoadRate(round: 1, bytesPerSecond: Double(500 * MiB))
        #expect(!used1)
        #expect(s.receiverRate == nil)
        // Its bytes still count.
        #expect(s.totalSentBytes == 1000 * MiB)
        #expect(s.history.map(\.sentBytes) == [1000 * MiB])
        // Round 2 is the first sample.
        #expect(round(&s, &clock, sent: 100 * MiB, over: .milliseconds(500), dirty: 100 * MiB) == iterating(3))
        #expect(s.senderRate == Double(200 * MiB))
        #expect(s.linkCapacity == Double(200 * MiB))
        #expect(s.bandwidthSamples == 1)
        let used2 = s.recordReceiverLoadRate(round: 2, bytesPerSecond: Double(150 * MiB))
        #expect(used2)
        #expect(s.bandwidthBytesPerSecond == Double(150 * MiB))
    }

    @Test func loadRatesCountOnlyFromUnthrottledRounds() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(maxBandwidth: Self.cap), start: clock.now)
        _ = Self.throttled(&s, &clock, dirty: 5 * MiB)
        _ = Self.throttled(&s, &clock, dirty: 5 * MiB)
        // A throttled round measures the throttle, not the destination.
        let used3 = s.recordReceiverLoadRate(round: 2, bytesPerSecond: Double(40 * MiB))
        #expect(!used3)
        #expect(s.receiverRate == nil)
        #expect(Self.throttled(&s, &clock, dirty: 5 * MiB) == iterating(4, limit: Self.cap, probe: true))
        // Round 4 is a probe: its load rate counts, once it has run.
        s.recordRound(iteration: 4, bytes: 5 * MiB, wireBytes: 5 * MiB, duration: .milliseconds(20))
        let used4 = s.recordReceiverLoadRate(round: 4, bytesPerSecond: Double(300 * MiB))
        #expect(used4)
        #expect(s.receiverRate == Double(300 * MiB))
        // A late report from throttled round 3 changes nothing; nor does a non-finite one.
        let used5 = s.recordReceiverLoadRate(round: 3, bytesPerSecond: Double(10 * MiB))
        #expect(!used5)
        for bad in [Double.infinity, .nan, -1] {
            let used = s.recordReceiverLoadRate(round: 4, bytesPerSecond: bad)
            #expect(!used, "\(bad)")
        }
        #expect(s.receiverRate == Double(300 * MiB))
        clock.advance(.milliseconds(20))
        s.updateRemaining(deviceID: 0, dirtyBytes: 5 * MiB)
        #expect(s.nextAction(now: clock.now) == iterating(5, limit: Self.cap))
        _ = Self.throttled(&s, &clock, dirty: 5 * MiB)
        let used6 = s.recordReceiverLoadRate(round: 5, bytesPerSecond: Double(40 * MiB))
        #expect(!used6)
        #expect(s.receiverRate == Double(300 * MiB))
    }

    @Test func loadRatesWithoutACapCountFromRoundTwo() {
        var s = PrecopyScheduler(configuration: .init(), start: .zero)
        let used7 = s.recordReceiverLoadRate(round: 1, bytesPerSecond: Double(100 * MiB))
        #expect(!used7)
        let used8 = s.recordReceiverLoadRate(round: 2, bytesPerSecond: Double(100 * MiB))
        #expect(used8)
        let used9 = s.recordReceiverLoadRate(round: 3, bytesPerSecond: Double(200 * MiB))
        #expect(used9)
        #expect(s.receiverRate == Double(150 * MiB))
    }

    @Test func thePlanCarriesTheMinimumRoundDuration() {
        #expect(PrecopyScheduler(configuration: .init(), start: .zero).firstRound().minimumDuration == .milliseconds(20))
        var clock = ManualClock()
        var s = PrecopyScheduler(
            configuration: .init(maxBandwidth: Self.cap, registeredDevices: [1], minimumRoundDuration: .milliseconds(5)),
            start: clock.now)
        #expect(s.firstRound().minimumDuration == .milliseconds(5))
        let a1 = Self.throttled(&s, &clock, dirty: 5 * MiB)
        #expect(a1.roundPlan?.minimumDuration == .milliseconds(5))
        // Nothing left, device 1 not acked: the round it waits in has the same plan's shape.
        let a2 = Self.throttled(&s, &clock, dirty: 0)
        #expect(a2 == .waitForSwitchoverAck(RoundPlan(iteration: 3, rateLimit: Self.cap, probe: false,
                                                      minimumDuration: .milliseconds(5))))
        s.switchoverAcknowledged(deviceID: 1)
        let a3 = Self.throttled(&s, &clock, dirty: 0)
        #expect(a3 == .switchover(reason: .nothingToSend))
        #expect(a3.roundPlan == nil)
    }
}

@Suite("Defaults")
struct DefaultsTests {
    @Test func theDefaultsAreTheProducts() {
        let c = SchedulerConfiguration()
        #expect(c.downtimeLimit == .milliseconds(300))
        #expect(c.maxBandwidth == nil)
        #expect(c.policy == .wait)
        #expect(c.deadline == .seconds(60))
        #expect(c.maxIterations == 1000)
        #expect(c.predictionMargin == 0.1)
        #expect(c.minimumBandwidthSamples == 2)
        #expect(c.defaultFixedCosts == .conservative)
        #expect(c.requireSwitchoverAck)
        #expect(c.probeInterval == 4)
        #expect(c.probeMinimumBytes == MiB)
        #expect(c.probeMaximumDuration == .milliseconds(250))
        #expect(c.minimumRoundDuration == .milliseconds(20))
    }

    @Test func byDefaultTwoSamplesAndATenthMargin() {
        var clock = ManualClock()
        var s = PrecopyScheduler(configuration: .init(defaultFixedCosts: .zero), start: clock.now)
        #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 10 * MiB) == iterating(2))
        // 10 ms predicted, but on one sample.
        #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 10 * MiB) == iterating(3))
        #expect(s.predictedDowntime == .milliseconds(10))
        // Two samples; 280 ms is within the limit but not within 300 × 0.9 = 270 ms.
        #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 280 * MiB) == iterating(4))
        #expect(s.predictedDowntime == .milliseconds(280))
        #expect(round(&s, &clock, sent: 1000 * MiB, over: .seconds(1), dirty: 260 * MiB) == .switchover(reason: .converged))
    }

    @Test func knobsAreBroughtIntoRange() {
        #expect(SchedulerConfiguration(predictionMargin: -1).predictionMargin == 0)
        #expect(SchedulerConfiguration(predictionMargin: 5).predictionMargin == 0.9)
        var c = SchedulerConfiguration()
        c.predictionMargin = 2
        c.minimumBandwidthSamples = -1
        c.probeInterval = 0
        let s = PrecopyScheduler(configuration: c, start: .zero)
        #expect(s.configuration.predictionMargin == 0.9)
        #expect(s.configuration.minimumBandwidthSamples == 0)
        #expect(s.configuration.probeInterval == 1)
    }
}

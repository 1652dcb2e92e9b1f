import Testing
@testable import DSScheduler

/// The transfer model's arithmetic, with given figures (no clock, no timing).
@Suite struct TransferCostModelTests {
    /// Rounds made by a known cost, 10 µs per extent and 1 ns per byte (~1 GB/s), wire at half
    /// the bytes.
    static func sample(extents: UInt64, bytes: UInt64, wireRatio: Double = 0.5) -> TransferCostModel.Sample {
        let seconds = 10e-6 * Double(extents) + 1e-9 * Double(bytes)
        return .init(extents: extents, sentBytes: bytes, wireBytes: UInt64(Double(bytes) * wireRatio),
                     duration: .nanoseconds(Int64((seconds * 1e9).rounded())))
    }

    @Test func fitRecoversPerExtentAndPerByteCosts() throws {
        var m = TransferCostModel()
        m.record(Self.sample(extents: 512, bytes: 512 * MiB))       // the bulk round
        m.record(Self.sample(extents: 20_000, bytes: 80 * MiB))     // dense runs
        m.record(Self.sample(extents: 9_000, bytes: 36 * MiB))      // sparser
        #expect(approx(m.perExtent, 10e-6, tolerance: 1e-4))
        #expect(approx(m.perByte, 1e-9, tolerance: 1e-4))
        // Stop-copy: 20 MiB in 5000 isolated extents = 50 ms + 20.97 ms, not 20 MiB at the bulk
        // round's 1.07 GB/s (19.5 ms).
        let t = try #require(m.transferTime(bytes: 20 * MiB, extents: 5_000))
        #expect(abs(t.seconds - (0.05 + 20.0 * 1.048576e-3)) < 1e-5)
        #expect(m.transferTime(bytes: 0, extents: 0) == .zero)
    }

    @Test func oneSampleIsBytesOverBandwidth() throws {
        var m = TransferCostModel()
        #expect(m.transferTime(bytes: MiB, extents: 1) == nil, "no sample: no prediction")
        m.record(.init(extents: 100, sentBytes: 100 * MiB, wireBytes: 50 * MiB, duration: .milliseconds(100)))
        #expect(m.perExtent == 0)
        #expect(approx(m.perByte, 0.1 / Double(100 * MiB)))
        let t = try #require(m.transferTime(bytes: 10 * MiB, extents: 10_000))
        #expect(abs(t.seconds - 0.01) < 1e-6)
    }

    /// A negative per-extent cost (noise: the round with more extents ran faster) is refused:
    /// the fit falls back to the per-byte cost alone.
    @Test func negativeCoefficientFallsBackToPerByte() {
        var m = TransferCostModel()
        m.record(.init(extents: 10, sentBytes: 100 * MiB, wireBytes: 50 * MiB, duration: .milliseconds(200)))
        m.record(.init(extents: 10_000, sentBytes: 100 * MiB, wireBytes: 50 * MiB, duration: .milliseconds(100)))
        #expect(m.perExtent == 0)
        // Weighted by 1/d²: (0.2/0.04 + 0.1/0.01) / (1/0.04 + 1/0.01) × 1/(100 MiB) = 0.12 s per 100 MiB.
        #expect(approx(m.perByte, 0.12 / Double(100 * MiB)))
    }

    /// Wire time apart from CPU time: a link that carried at most 50 MiB/s of wire bytes bounds
    /// the stop-copy when the dirty pages compress worse than the rounds did.
    @Test func wireTimeUsesTheLatestCompressibility() throws {
        var m = TransferCostModel()
        // CPU cost 1 ns/byte; the bulk round compressed to 25% and took 100 ms for 100 MiB:
        // 25 MiB of wire in 0.1 s = 250 MiB/s of wire.
        m.record(.init(extents: 0, sentBytes: 100 * MiB, wireBytes: 25 * MiB, duration: .milliseconds(100)))
        #expect(approx(m.wireRate, 250 * Double(MiB)))
        // Dirty pages barely compress (ratio 0.9), and the wire is the limit: 18 MiB of wire
        // bytes in 72 ms (250 MiB/s).
        m.record(.init(extents: 0, sentBytes: 20 * MiB, wireBytes: 18 * MiB, duration: .milliseconds(72)))
        #expect(approx(m.wireRatio, 0.9))
        let cpu = try #require(m.cpuTime(bytes: 40 * MiB, extents: 0))
        let wire = try #require(m.wireTime(bytes: 40 * MiB))
        #expect(abs(wire.seconds - 40 * 0.9 / 250) < 1e-6)  // 144 ms
        #expect(try #require(m.transferTime(bytes: 40 * MiB, extents: 0)) == max(cpu, wire))
    }

    /// The latest round ran 1.5× slower than the fit says (the machine got busier): the CPU time
    /// of what remains is scaled by that, within 0.5...2.
    @Test func latestRoundScalesTheCPUTime() throws {
        var m = TransferCostModel()
        m.record(Self.sample(extents: 512, bytes: 512 * MiB))
        m.record(Self.sample(extents: 20_000, bytes: 80 * MiB))
        m.record(Self.sample(extents: 9_000, bytes: 36 * MiB))
        #expect(approx(m.loadFactor, 1, tolerance: 1e-4))
        let perExtent = m.perExtent, perByte = try #require(m.perByte)
        var slow = Self.sample(extents: 8_000, bytes: 30 * MiB)
        slow.duration = slow.duration * 1.5
        m.record(slow)
        let fitted = m.perExtent * 8_000 + m.perByte! * Double(30 * MiB)
        #expect(approx(m.loadFactor, slow.duration.seconds / fitted))
        #expect(m.loadFactor > 1.2 && m.loadFactor < 1.5)
        let t = try #require(m.cpuTime(bytes: 20 * MiB, extents: 5_000))
        #expect(abs(t.seconds - m.loadFactor * (m.perExtent * 5_000 + m.perByte! * Double(20 * MiB))) < 1e-9)
        #expect(perExtent > 0 && perByte > 0)
        // An outlier ten times slower counts as twice.
        var outlier = Self.sample(extents: 8_000, bytes: 30 * MiB)
        outlier.duration = outlier.duration * 10
        m.record(outlier)
        #expect(m.loadFactor == 2)
    }

    @Test func keepsTheBulkRoundAndTheLatestWindow() {
        var m = TransferCostModel(window: 2)
        for i in 1 ... 5 { m.record(Self.sample(extents: UInt64(i * 1000), bytes: UInt64(i) * MiB)) }
        #expect(m.bulk?.extents == 1000)
        #expect(m.recent.map(\.extents) == [4000, 5000])
        m.record(.init(extents: 1, sentBytes: 0, wireBytes: 0, duration: .milliseconds(1)))  // nothing sent: ignored
        #expect(m.recent.map(\.extents) == [4000, 5000])
    }

    /// The scheduler predicts with the model once rounds report extents: fixed costs + the
    /// model's time for the remaining bytes and extents.
    @Test func schedulerPredictsWithTheModel() throws {
        var s = PrecopyScheduler(configuration: SchedulerConfiguration(defaultFixedCosts: .zero), start: .zero)
        for (i, x) in [Self.sample(extents: 512, bytes: 512 * MiB), Self.sample(extents: 20_000, bytes: 80 * MiB),
                       Self.sample(extents: 9_000, bytes: 36 * MiB)].enumerated() {
            s.recordRound(iteration: i + 1, bytes: x.sentBytes, wireBytes: x.wireBytes, duration: x.duration, extents: x.extents)
        }
        s.updateRemaining(deviceID: 0, dirtyBytes: 20 * MiB, extents: 5_000)
        let predicted = try #require(s.predictedDowntime)
        #expect(abs(predicted.seconds - (0.05 + 20.0 * 1.048576e-3)) < 1e-5)
        // A slower destination (10 MiB/s of loading) bounds it instead.
        s.recordReceiverLoadRate(round: 2, bytesPerSecond: 10 * Double(MiB))
        #expect(abs(try #require(s.predictedDowntime).seconds - 2.0) < 1e-6)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

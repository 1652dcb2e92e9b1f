/// The scheduler's knobs, with the product's defaults: `MigrationConfiguration` holds one
/// of these and copies nothing.
public struct SchedulerConfiguration: Equatable, Sendable {
    /// Maximum acceptable predicted downtime.
    public var downtimeLimit: Duration
    /// Pre-copy throttle in device bytes/s (`--max-bandwidth`); nil = none.
    /// Never applied to stop-and-copy, and not used for the prediction.
    public var maxBandwidth: UInt64?
    public var policy: NonConvergencePolicy
    /// Measured from the scheduler's `start`; checked under every policy; nil = none.
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
    /// the predicted downtime is at most `downtimeLimit × (1 − predictionMargin)`. Clamped to
    /// 0...0.9. The default 0.1 covers the ±7% of the limit measured on the test links.
    public var predictionMargin: Double
    /// Bandwidth samples (rounds) needed before a prediction may switch over, unless nothing
    /// remains: one round's rate on a busy machine can be off by a fifth.
    public var minimumBandwidthSamples: Int
    /// With `maxBandwidth`, at least this many rounds pass between two probes (unthrottled
    /// rounds that sample the link stop-copy will use). At least 1.
    public var probeInterval: Int
    /// A round is a probe only if it sends at least this many bytes (a smaller one says
    /// little about the link).
    public var probeMinimumBytes: UInt64
    /// ...and at most this long at `maxBandwidth` (a bounded burst above the cap).
    public var probeMaximumDuration: Duration
    /// The shortest a pre-copy round lasts: tiny rounds are paced to it.
    public var minimumRoundDuration: Duration
    /// Who switches over. `.automatic`: the scheduler's switchover decisions are final.
    /// `.external`: the VMM does (after pausing its vCPUs). A switchover decision then only
    /// marks the scheduler `ready` and rounds go on until the caller switches over; aborts
    /// (a deadline under `wait` or `abort`) stay final.
    public var switchover: SwitchoverControl = .automatic

    public init(
        downtimeLimit: Duration = .milliseconds(300),
        maxBandwidth: UInt64? = nil,
        policy: NonConvergencePolicy = .wait,
        deadline: Duration? = .seconds(60),
        defaultFixedCosts: FixedCosts = .conservative,
        maxIterations: Int = 1000,
        requireSwitchoverAck: Bool = true,
        minimumRoundsBeforeJudging: Int = 3,
        stallWindow: Int = 3,
        stallShrinkFactor: Double = 0.95,
        rateTimeConstant: Duration = .seconds(1),
        registeredDevices: [Int] = [],
        predictionMargin: Double = 0.1,
        minimumBandwidthSamples: Int = 2,
        probeInterval: Int = 4,
        probeMinimumBytes: UInt64 = 1 << 20,
        probeMaximumDuration: Duration = .milliseconds(250),
        minimumRoundDuration: Duration = .milliseconds(20)
    ) {
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
        self.predictionMargin = predictionMargin
        self.minimumBandwidthSamples = minimumBandwidthSamples
        self.probeInterval = probeInterval
        self.probeMinimumBytes = probeMinimumBytes
        self.probeMaximumDuration = probeMaximumDuration
        self.minimumRoundDuration = minimumRoundDuration
        self = normalized
    }

    /// The knobs brought into range (the fields are settable, so the scheduler applies this too).
    var normalized: SchedulerConfiguration {
        var c = self
        c.predictionMargin = min(max(predictionMargin.isNaN ? 0 : predictionMargin, 0), 0.9)
        c.minimumBandwidthSamples = max(minimumBandwidthSamples, 0)
        c.probeInterval = max(probeInterval, 1)
        return c
    }

    /// The largest round a probe may be: `probeMaximumDuration` at `cap` bytes/s, rounded
    /// down (a quarter of the cap by default).
    func probeMaximumBytes(cap: UInt64) -> UInt64 {
        let ns = probeMaximumDuration.dsNanoseconds
        guard ns > 0 else { return 0 }
        let product = cap.multipliedFullWidth(by: UInt64(ns))
        let second: UInt64 = 1_000_000_000
        guard product.high < second else { return .max }
        return second.dividingFullWidth(product).quotient
    }
}

// The scheduler's value types: time, fixed costs, decisions and round plans.

// MARK: - Time

/// A point in time on the caller's clock, in nanoseconds since an arbitrary
/// origin. The scheduler never reads a clock; tests use a manual one.
package struct Instant: Comparable, Hashable, Sendable, CustomStringConvertible {
    package var nanoseconds: UInt64

    package init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    package static let zero = Instant(nanoseconds: 0)

    package static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }

    /// `instant + duration`, saturating at 0 and UInt64.max.
    package static func + (a: Instant, d: Duration) -> Instant {
        let ns = d.dsNanoseconds
        if ns >= 0 {
            let (sum, o) = a.nanoseconds.addingReportingOverflow(UInt64(ns))
            return Instant(nanoseconds: o ? .max : sum)
        }
        let m = ns.magnitude
        return Instant(nanoseconds: a.nanoseconds >= m ? a.nanoseconds - m : 0)
    }

    /// The signed duration from `b` to `a`.
    package static func - (a: Instant, b: Instant) -> Duration {
        if a.nanoseconds >= b.nanoseconds {
            return .nanoseconds(Int64(clamping: a.nanoseconds - b.nanoseconds))
        }
        return .nanoseconds(-Int64(clamping: b.nanoseconds - a.nanoseconds))
    }

    package var description: String { "t+\(formatDuration(.nanoseconds(Int64(clamping: nanoseconds))))" }
}

// MARK: - Policy and costs

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

// MARK: - Decisions

/// Why the scheduler switched over.
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
    /// The caller (a VMM deciding switchover itself) asked for it.
    case requested
}

/// Who decides when to switch over.
public enum SwitchoverControl: String, Equatable, Hashable, Sendable, CaseIterable {
    /// The scheduler: it switches over as soon as the prediction fits (or its policy says so).
    case automatic
    /// The caller: the scheduler reports when it would switch over (`ready`) and keeps planning
    /// rounds; the caller switches over when it is ready itself.
    case external
}

/// How to run one pre-copy round: the session sends the round as planned.
package struct RoundPlan: Equatable, Hashable, Sendable {
    /// 1-based round number; pass it back to `recordRound` and with the round's load rates.
    package var iteration: Int
    /// Throttle in device bytes/s; nil = unthrottled.
    package var rateLimit: UInt64?
    /// Sent unthrottled despite `maxBandwidth`, so that it samples the link capacity.
    package var probe: Bool
    /// The shortest the round may last: a round that ends sooner waits out the rest, so an
    /// idle device does not spin through rounds.
    package var minimumDuration: Duration

    package init(iteration: Int, rateLimit: UInt64?, probe: Bool, minimumDuration: Duration) {
        self.iteration = iteration
        self.rateLimit = rateLimit
        self.probe = probe
        self.minimumDuration = minimumDuration
    }
}

/// What the session does after a round.
package enum Action: Equatable, Sendable {
    /// Send another pre-copy round, as planned.
    case iterate(RoundPlan)
    /// Stop the source and copy the rest.
    case switchover(reason: SwitchoverReason)
    /// Give up; the VM stays (or resumes) on the source.
    case abort(reason: String)
    /// Switchover is allowed but a switchover-ack is missing: send another round, as planned,
    /// and ask again.
    case waitForSwitchoverAck(RoundPlan)

    package var isTerminal: Bool {
        switch self {
        case .switchover, .abort: return true
        case .iterate, .waitForSwitchoverAck: return false
        }
    }

    /// The next round's plan; nil once the decision is terminal.
    package var roundPlan: RoundPlan? {
        switch self {
        case .iterate(let plan), .waitForSwitchoverAck(let plan): return plan
        case .switchover, .abort: return nil
        }
    }
}

/// One row of the per-round history, for reporting.
package struct RoundRecord: Equatable, Sendable {
    /// 1-based round number.
    package var iteration: Int
    /// When the round ended (the `now` passed to `nextAction`).
    package var endedAt: Instant
    /// Device bytes sent during the round.
    package var sentBytes: UInt64
    /// Wire bytes (after compression/framing) sent during the round.
    package var wireBytes: UInt64
    /// Remaining bytes (dirty + stop-copy-only) at the end of the round.
    package var remainingBytes: UInt64
    /// Predicted downtime at the end of the round; nil if bandwidth unknown.
    package var predictedDowntime: Duration?
    /// The action returned for this round.
    package var action: Action
}

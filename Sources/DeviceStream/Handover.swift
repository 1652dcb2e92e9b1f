import DSWire
import DSTransport

/// The two-phase handover as one pure state machine, shared by both ends (no sockets, no
/// threads, no clock), so every out-of-order frame can be tested on its own.
///
/// Both ends walk the same stages; each step is one frame, sent by one end and received by the
/// other (WIRE.md, "Handover"):
///
/// ```
/// transferring ─(every channelEnd: sent / arrived and matched)─▶ stateSent
/// stateSent ─loaded (dest → src)─▶ loaded ─commit (src → dest)─▶ committed
/// committed ─resumed (dest → src)─▶ resumed ─ack (dest → src)─▶ acknowledged
/// acknowledged ─endOfStream (src → dest)─▶ finished
/// ```
///
/// The source restarts its devices on a failure before it sends `commit` and never after; the
/// destination runs its devices only on `commit`. A step frame out of turn, or a frame that has
/// no business at the current stage, is a protocol violation: the session aborts.
package struct Handover: Sendable {
    package enum Side: Sendable, CaseIterable { case source, destination }

    package enum Stage: Int, Comparable, Sendable, CaseIterable {
        /// Pre-copy and stop-copy data.
        case transferring
        /// Every `channelEnd` is sent (source), or arrived and matched (destination).
        case stateSent
        /// `loaded`: the destination's devices are validated and wait in STOP.
        case loaded
        /// `commit`: the source will never restart its devices.
        case committed
        /// `resumed`: the destination's devices are RUNNING (the downtime ends).
        case resumed
        /// `ack`: the destination's digests.
        case acknowledged
        /// `endOfStream`: the source's summary.
        case finished

        package static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    }

    /// What an end does when a frame from its peer arrives.
    package enum Reaction: Equatable, Sendable {
        /// A frame this stage allows besides the steps (acks, load stats, pings, pongs): handle
        /// it as usual; the stage does not change.
        case none
        /// Source, on `loaded`: give the devices up for good and send `commit`.
        case sendCommit
        /// Destination, on `commit`: take the devices STOP → RUNNING, then send `resumed`.
        case runDevices
        /// Source, on `resumed`: the measured downtime ends now.
        case endDowntime
        /// Source on `ack`, destination on `endOfStream`: compare the two ends' digests.
        case compareDigests
    }

    package let side: Side
    package private(set) var stage: Stage = .transferring

    package init(side: Side) { self.side = side }

    /// The frame that leads from `stage` to the next stage and the end that sends it; nil after
    /// `finished`, and for `transferring`, which ends by a local event (`stateSent()`).
    package static func step(after stage: Stage) -> (frame: FrameType, sender: Side)? {
        switch stage {
        case .transferring, .finished: nil
        case .stateSent: (.loaded, .destination)
        case .loaded: (.commit, .source)
        case .committed: (.resumed, .destination)
        case .resumed: (.ack, .destination)
        case .acknowledged: (.endOfStream, .source)
        }
    }

    /// The frames besides the steps that the peer may send at `stage`.
    package static func background(side: Side, stage: Stage) -> Set<FrameType> {
        switch side {
        case .source:
            // The destination's acks, load stats and pongs all go out before its `loaded`.
            stage <= .loaded ? [.switchoverAck, .loadStats, .pong] : []
        case .destination:
            // Channel 0 after the data phase: the source may still ping until it commits.
            stage >= .stateSent && stage <= .loaded ? [.ping] : []
        }
    }

    /// The end of the transfer: every channel end is sent (source) or arrived and matched
    /// (destination).
    package mutating func stateSent() {
        precondition(stage == .transferring, "handover: state sent twice (stage \(stage))")
        stage = .stateSent
    }

    /// This end sent the step frame `frame`. Sending out of turn is a programming error.
    package mutating func sent(_ frame: FrameType) {
        guard let next = Self.step(after: stage), next.frame == frame, next.sender == side else {
            preconditionFailure("handover: the \(side) sent \(frame) at stage \(stage)")
        }
        stage = Stage(rawValue: stage.rawValue + 1)!
    }

    /// Whether this end may send `frame` now (the next step is its own).
    package func maySend(_ frame: FrameType) -> Bool {
        guard let next = Self.step(after: stage) else { return false }
        return next.frame == frame && next.sender == side
    }

    /// A frame from the peer. Returns what to do; throws a protocol violation for a frame out
    /// of turn (a step ahead of time, a second copy of a step, a frame only this end sends).
    package mutating func received(_ frame: FrameType) throws(TransferError) -> Reaction {
        if let next = Self.step(after: stage), next.frame == frame, next.sender != side {
            stage = Stage(rawValue: stage.rawValue + 1)!
            switch frame {
            case .loaded: return .sendCommit
            case .commit: return .runDevices
            case .resumed: return .endDowntime
            case .ack, .endOfStream: return .compareDigests
            default: return .none
            }
        }
        if Self.background(side: side, stage: stage).contains(frame) { return .none }
        let peer = side == .source ? "destination" : "source"
        throw TransferError(.protocolViolation,
                            "the \(peer) sent \(frame) out of order (the \(side) is at handover stage \(stage)\(expecting)); the migration is refused")
    }

    /// ", expecting X" when the next step is the peer's.
    private var expecting: String {
        guard let next = Self.step(after: stage), next.sender != side else { return "" }
        return ", expecting \(next.frame)"
    }
}

// The scheduler's pure judgements: the next round's plan, convergence, and the action.

extension PrecopyScheduler {
    /// How round `round` runs, from what the scheduler knows now. With `maxBandwidth` it is
    /// throttled to the cap, unless it is a probe: after round 1, at least `probeInterval`
    /// rounds after the last probe, with the pre-copy bytes it will send (the latest
    /// `updateRemaining`) within `probeMinimumBytes...probeMaximumBytes(cap:)`.
    func plan(round: Int) -> RoundPlan {
        let config = configuration
        var probe = false
        if let cap = config.maxBandwidth, round > 1, round - lastProbe >= config.probeInterval {
            let planned = dirtyBytes
            probe = planned >= config.probeMinimumBytes && planned <= config.probeMaximumBytes(cap: cap)
        }
        return RoundPlan(iteration: round, rateLimit: probe ? nil : config.maxBandwidth, probe: probe,
                         minimumDuration: config.minimumRoundDuration)
    }

    /// The action after a round: `next` is the plan a non-terminal action carries.
    func decide(now: Instant, predicted: Duration?, nonConvergence why: String?, next: RoundPlan) -> Action {
        let config = configuration
        let budget = config.downtimeLimit * (1 - config.predictionMargin)
        let enoughSamples = remainingBytes == 0 || bandwidthSamples >= config.minimumBandwidthSamples
        let fits = enoughSamples && (predicted.map { $0 <= budget } ?? false)
        let missing = pendingAcks
        let iterate = Action.iterate(next)

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

        if fits { return .waitForSwitchoverAck(next) }

        guard let why else { return iterate }
        let detail = "migration does not converge (\(why)): \(predictionSummary(predicted)); dirty rate \(formatRate(dirtyRateBytesPerSecond)) vs bandwidth \(formatRate(bandwidthBytesPerSecond))"
        switch config.policy {
        case .wait:
            if config.deadline == nil && iteration >= config.maxIterations {
                return .abort(reason: "\(detail); staying on the source")
            }
            return iterate
        case .switchover:
            return missing.isEmpty ? .switchover(reason: .nonConvergencePolicy) : .waitForSwitchoverAck(next)
        case .abort:
            return .abort(reason: "\(detail); staying on the source")
        }
    }

    /// Why the migration is judged not to converge, or nil.
    func nonConvergence() -> String? {
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

    func predictionSummary(_ predicted: Duration?) -> String {
        let p = predicted.map(formatDuration) ?? "unknown (no bandwidth measured)"
        return "predicted downtime \(p) vs limit \(formatDuration(configuration.downtimeLimit))"
    }
}

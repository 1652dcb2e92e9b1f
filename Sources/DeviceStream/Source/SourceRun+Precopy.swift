import DSSupport
import DSWire
import DSTransport
import DSDevices
import DSScheduler

extension SourceRun {
    /// Switchover's fixed costs, each for what it is:
    /// - stop: the devices' own estimate, else the measured RUNNING → PRE_COPY transition (the
    ///   nearest transition the source can time without stopping anything);
    /// - config: saveConfig timed now (the blob is small; its transfer is in the data term);
    /// - destination resume: the destination's devices' estimate, reported at setup;
    /// - round trips: two (data → `loaded`, then `commit` → `resumed`), re-measured by a ping
    ///   after every round, the smallest recent sample kept.
    func switchoverCosts(_ setup: SetupResult) throws(TransferError) -> FixedCosts {
        let estimates = savers.map { $0.device.switchoverCostEstimate }
        var stop = setup.transition
        if estimates.allSatisfy({ $0 != nil }) {
            stop = estimates.compactMap { $0?.stop }.max() ?? stop
        } else {
            stop = max(stop, estimates.compactMap { $0?.stop }.max() ?? .zero)
        }
        var resume = estimates.compactMap { $0?.resume }.reduce(Duration.zero, +)
        if let d = setup.accept?.resumeEstimateMilliseconds, d.isFinite, d >= 0 { resume = .microseconds(safeMicros(d)) }
        let c0 = Monotonic.now
        try eachSaver { s throws(DeviceError) in _ = try s.device.saveConfig() }
        return FixedCosts(stopTransition: max(stop, .microseconds(100)), configState: Monotonic.now - c0,
                          destinationResume: max(resume, .microseconds(100)), roundTrip: setup.roundTrip * 2)
    }

    func makeScheduler(_ setup: SetupResult) throws(TransferError) -> PrecopyScheduler {
        var config = configuration.scheduler
        config.defaultFixedCosts = try switchoverCosts(setup)
        var scheduler = PrecopyScheduler(configuration: config, start: Instant(nanoseconds: Monotonic.nanoseconds))
        for s in savers where s.supportsPrecopy { scheduler.registerDevice(id: s.id) }
        return scheduler
    }

    /// Pre-copy rounds until the scheduler decides; returns why it switched over and how many
    /// rounds ran. Throws (staying on the source) when it aborts.
    mutating func precopy(_ scheduler: inout PrecopyScheduler,
                          onEvent: (MigrationEvent) -> Void) throws(TransferError) -> (SwitchoverReason, Int) {
        let precopyDevices = savers.filter { $0.supportsPrecopy }
        var iteration = 0
        var decision: Action = .switchover(reason: .noPrecopy)
        // No device can pre-copy (a file, a device without PRE_COPY): every byte moves in
        // stop-copy, and rounds would only spin, so switch over at once.
        var plan: RoundPlan? = precopyDevices.isEmpty ? nil : scheduler.firstRound()
        while let current = plan {
            iteration = current.iteration
            let roundStart = Monotonic.now
            decision = try round(current, devices: precopyDevices, scheduler: &scheduler, onEvent: onEvent)
            if let e = abort.error { throw e }
            plan = decision.roundPlan
            // Pace tiny rounds: a round lasts at least the plan's minimum, so an idle device does
            // not spin through rounds (and the workload gets the CPU to dirty something).
            let elapsed = Monotonic.now - roundStart
            if plan != nil && elapsed < current.minimumDuration { sleep(for: current.minimumDuration - elapsed) }
        }
        return try switchoverDecision(decision, rounds: iteration, scheduler: scheduler, onEvent: onEvent)
    }

    /// The scheduler's final word: an abort stays on the source; a switchover is reported.
    mutating func switchoverDecision(_ decision: Action, rounds: Int, scheduler: PrecopyScheduler,
                                     onEvent: (MigrationEvent) -> Void) throws(TransferError) -> (SwitchoverReason, Int) {
        if case .abort(let reason) = decision {
            report.converged = false
            throw TransferError(.aborted, "migration aborted, staying on the source: \(reason)")
        }
        guard case .switchover(let reason) = decision else { throw TransferError(.aborted, "unexpected scheduler decision \(decision)") }
        report.converged = reason == .noPrecopy ? nil : (reason == .converged || reason == .nothingToSend)
        report.switchoverReason = reason.rawValue
        // Without a single round there is no bandwidth, so no prediction (not the fixed costs
        // alone, which would claim a multi-gigabyte stop-copy takes milliseconds).
        let predicted = reason == .noPrecopy ? nil : scheduler.predictedDowntime
        report.expectedDowntime = predicted
        onEvent(.switchover(predicted: predicted, reason: reason.rawValue))
        return (reason, rounds)
    }

    /// One pre-copy round as the plan says, its measurements fed to the scheduler; returns the
    /// scheduler's next action.
    mutating func round(_ plan: RoundPlan, devices: [DeviceSaver], scheduler: inout PrecopyScheduler,
                        onEvent: (MigrationEvent) -> Void) throws(TransferError) -> Action {
        let iteration = plan.iteration
        let (ranges, streams) = try self.plan(devices)
        let pacer = plan.rateLimit.map { Pacer(rate: $0) }
        let roundStart = Monotonic.now
        feedback.sent(round: UInt32(iteration))
        let (bytes, wire) = try roundSender().send(ranges, streams: streams, flags: [], iteration: iteration, pacer: pacer)
        if iteration == 1 {
            let counters = self.counters
            try onChannel0 { ch throws(TransferError) in
                for s in devices { try ch.sendControl(.initDataSent, stream: UInt16(s.id), payload: counters.totals(device: s.id).encoded()) }
            }
        }
        // A round ends when the destination has loaded it, not when its last byte entered a
        // socket buffer: so the rate is what the path delivers, and no earlier round is still in
        // flight (megabytes in socket buffers and queues) when stop-copy starts.
        try feedback.waitRoundLoaded(UInt32(iteration), timeout: options.timeout)
        let duration = Monotonic.now - roundStart
        // With the path empty, a ping measures the round trip, not a queue (its pong lands in a
        // later round's estimate).
        let pingAt = Monotonic.nanoseconds
        try onChannel0 { ch throws(TransferError) in try ch.sendControl(.ping, position: pingAt) }
        report.precopyBytes += bytes
        report.iterations = iteration
        scheduler.recordRound(iteration: iteration, bytes: bytes, wireBytes: wire, duration: duration)
        let dirty = try feed(&scheduler)
        let action = scheduler.nextAction(now: Instant(nanoseconds: Monotonic.nanoseconds))
        trace(round: plan, bytes: bytes, wire: wire, duration: duration, scheduler: scheduler)
        let result = IterationReport(iteration: iteration, sentBytes: bytes, wireBytes: wire, dirtyBytes: dirty,
                                     bandwidth: scheduler.bandwidthBytesPerSecond, predictedDowntime: scheduler.predictedDowntime,
                                     duration: duration, unthrottledProbe: plan.probe)
        report.rounds.append(result)
        onEvent(.iteration(result))
        return action
    }

    /// Feeds the scheduler what arrived since the last round (load rates, round trips, acks) and
    /// every device's remaining bytes; returns the dirty total.
    mutating func feed(_ scheduler: inout PrecopyScheduler) throws(TransferError) -> UInt64 {
        for sample in feedback.takeLoadRates() {
            if scheduler.recordReceiverLoadRate(round: Int(sample.round), bytesPerSecond: sample.rate) {
                report.receiverLoadRate = sample.rate
            }
        }
        // The smallest of the last few pings (queueing behind data only adds), so the estimate
        // follows the path as it is now, up or down.
        if let rtt = feedback.roundTrip {
            scheduler.recordFixedCost(.roundTrip, rtt * 2)
            report.roundTrip = rtt
        }
        for id in feedback.takeAcks() { scheduler.switchoverAcknowledged(deviceID: id) }
        var dirty: UInt64 = 0
        for s in savers {
            let p: (precopy: UInt64, stopCopyOnly: UInt64)
            do throws(DeviceError) { p = try s.pending(chunkSize: options.chunkSize) } catch { throw device(error) }
            scheduler.updateRemaining(deviceID: s.id, dirtyBytes: p.precopy, stopCopyOnlyBytes: p.stopCopyOnly)
            dirty += p.precopy + p.stopCopyOnly
        }
        return dirty
    }

    func trace(round plan: RoundPlan, bytes: UInt64, wire: UInt64, duration: Duration, scheduler: PrecopyScheduler) {
        let t = Trace(start: start, on: configuration.trace, warn: warn)
        let mib = { (r: Double?) in r.map { Int($0 / 1048576) } ?? -1 }
        t.mark("round \(plan.iteration)\(plan.probe ? " (probe)" : ""): \(bytes) bytes (\(wire) on the wire) in \(duration.milliseconds) ms; sender \(mib(scheduler.senderRate)) MiB/s, receiver \(mib(scheduler.receiverRate)) MiB/s, rtt \(feedback.roundTrip.map { $0.milliseconds } ?? -1) ms, remaining \(scheduler.remainingBytes), predicted \(scheduler.predictedDowntime.map { $0.milliseconds } ?? -1) ms")
    }
}

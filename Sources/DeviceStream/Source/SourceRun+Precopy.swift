import DSSupport
import DSWire
import DSTransport
import DSDevices
import DSScheduler

extension SourceRun {
    /// The scheduler's id for the VMM's own pending bytes (no device has it: ids are 0..<256).
    static let externalDeviceID = -1

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

    /// Pre-copy rounds until the scheduler decides (or, with external switchover, the caller);
    /// returns how many rounds ran. Throws (staying on the source) when it aborts.
    mutating func precopy(_ scheduler: inout PrecopyScheduler) throws(TransferError) -> Int {
        let precopyDevices = savers.filter { $0.supportsPrecopy }
        let external = configuration.scheduler.switchover == .external
        // No device can pre-copy (a file, a device without PRE_COPY): every byte moves in
        // stop-copy, and rounds would only spin, so switch over at once (or once the caller says).
        guard !precopyDevices.isEmpty else {
            if external { try awaitExternalSwitchover(predicted: nil, reason: .noPrecopy) }
            try announceSwitchover(external ? .requested : .noPrecopy, predicted: nil)
            return 0
        }
        var iteration = 0
        var plan = scheduler.firstRound()
        var wasReady = false
        while true {
            iteration = plan.iteration
            let roundStart = Monotonic.now
            let decision = try round(plan, devices: precopyDevices, scheduler: &scheduler)
            if let e = abort.error { throw e }
            if external && control.isSwitchoverRequested {
                try announceSwitchover(.requested, predicted: scheduler.predictedDowntime)
                return iteration
            }
            if let ready = scheduler.ready {
                if !wasReady { control.update { $0.phase = .readyToSwitchover } }
                emit(.readyToSwitchover(predicted: scheduler.predictedDowntime, reason: ready))
            }
            wasReady = scheduler.ready != nil
            guard let next = decision.roundPlan else {
                try finish(decision, scheduler: scheduler)
                return iteration
            }
            // Pace tiny rounds: a round lasts at least the plan's minimum, so an idle device does
            // not spin through rounds (and the workload gets the CPU to dirty something).
            let elapsed = Monotonic.now - roundStart
            if elapsed < plan.minimumDuration { sleep(for: plan.minimumDuration - elapsed) }
            plan = next
        }
    }

    /// With external switchover and nothing to pre-copy: ready at once, then wait for the caller.
    func awaitExternalSwitchover(predicted: Duration?, reason: SwitchoverReason) throws(TransferError) {
        control.update { $0.phase = .readyToSwitchover }
        emit(.readyToSwitchover(predicted: predicted, reason: reason))
        try control.waitForSwitchover(abort: abort)
    }

    /// The scheduler's final word: an abort stays on the source; a switchover is announced.
    mutating func finish(_ decision: Action, scheduler: PrecopyScheduler) throws(TransferError) {
        if case .abort(let reason) = decision {
            report.converged = false
            throw TransferError(.aborted, "migration aborted, staying on the source: \(reason)")
        }
        guard case .switchover(let reason) = decision else { throw TransferError(.aborted, "unexpected scheduler decision \(decision)") }
        try announceSwitchover(reason, predicted: scheduler.predictedDowntime)
    }

    /// Records why and with what prediction the switchover starts, and says so.
    mutating func announceSwitchover(_ reason: SwitchoverReason, predicted: Duration?) throws(TransferError) {
        report.converged = reason == .noPrecopy || reason == .requested ? nil : (reason == .converged || reason == .nothingToSend)
        report.switchoverReason = reason
        // Without a single round there is no bandwidth, so no prediction (not the fixed costs
        // alone, which would claim a multi-gigabyte stop-copy takes milliseconds).
        let prediction = report.rounds.isEmpty ? nil : predicted
        report.expectedDowntime = prediction
        control.update { $0.expectedDowntime = prediction }
        emit(.switchover(predicted: prediction, reason: reason))
    }

    /// One pre-copy round as the plan says, its measurements fed to the scheduler; returns the
    /// scheduler's next action.
    mutating func round(_ plan: RoundPlan, devices: [DeviceSaver], scheduler: inout PrecopyScheduler) throws(TransferError) -> Action {
        let iteration = plan.iteration
        let harvestAt = Monotonic.now
        let (planned, streams) = try self.plan(devices)
        let pacer = plan.rateLimit.map { Pacer(rate: $0) }
        let roundStart = Monotonic.now
        feedback.sent(round: UInt32(iteration))
        let (bytes, wire) = try roundSender().send(planned, streams: streams, flags: [], iteration: iteration, pacer: pacer)
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
        scheduler.recordRound(iteration: iteration, bytes: bytes, wireBytes: wire, duration: duration,
                              extents: UInt64(planned.extents.count))
        let dirty = try feed(&scheduler)
        let action = scheduler.nextAction(now: Instant(nanoseconds: Monotonic.nanoseconds))
        trace(round: plan, bytes: bytes, wire: wire, duration: duration, scheduler: scheduler)
        // Honest figures: what tracking reported dirty for this round (a stream's bytes are its
        // dirty bytes), what went, and what is left.
        let streamBytes = bytes - min(bytes, planned.pageBytes)
        var result = IterationReport(iteration: iteration, sentBytes: bytes, wireBytes: wire,
                                     dirtyBytes: planned.harvestedBytes + streamBytes,
                                     bandwidth: scheduler.bandwidthBytesPerSecond, predictedDowntime: scheduler.predictedDowntime,
                                     duration: duration, unthrottledProbe: plan.probe)
        result.remainingBytes = dirty
        result.extents = UInt64(planned.extents.count)
        result.remainingExtents = scheduler.remainingExtents
        result.startedAt = roundStart - start
        result.endedAt = roundStart + duration - start
        result.harvestInterval = lastHarvest.map { harvestAt - $0 }
        lastHarvest = harvestAt
        report.rounds.append(result)
        control.update {
            $0.iterations = iteration; $0.remainingBytes = dirty; $0.bandwidth = scheduler.bandwidthBytesPerSecond
            $0.expectedDowntime = scheduler.predictedDowntime
            for s in savers where s.id < $0.deviceBytes.count { $0.deviceBytes[s.id] = counters.totals(device: s.id).bytes }
        }
        emit(.iteration(result))
        for s in devices { emit(.deviceProgress(device: s.id, bytes: counters.totals(device: s.id).bytes)) }
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
        // The VMM's own downtime bytes (its RAM) share the budget, as a device of their own.
        scheduler.updateRemaining(deviceID: Self.externalDeviceID, dirtyBytes: 0, stopCopyOnlyBytes: control.externalPendingBytes)
        var dirty: UInt64 = 0
        for s in savers {
            let p: (precopy: UInt64, stopCopyOnly: UInt64, extents: UInt64)
            do throws(DeviceError) { p = try s.pending(chunkSize: options.chunkSize) } catch { throw device(error) }
            scheduler.updateRemaining(deviceID: s.id, dirtyBytes: p.precopy, stopCopyOnlyBytes: p.stopCopyOnly, extents: p.extents)
            dirty += p.precopy + p.stopCopyOnly
        }
        return dirty
    }

    func trace(round plan: RoundPlan, bytes: UInt64, wire: UInt64, duration: Duration, scheduler: PrecopyScheduler) {
        let t = Trace(start: start, on: configuration.trace, warn: warn)
        let mib = { (r: Double?) in r.map { Int($0 / 1048576) } ?? -1 }
        t.mark("round \(plan.iteration)\(plan.probe ? " (probe)" : ""): \(bytes) bytes (\(wire) on the wire) in \(duration.milliseconds) ms; sender \(mib(scheduler.senderRate)) MiB/s, receiver \(mib(scheduler.receiverRate)) MiB/s, rtt \(feedback.roundTrip.map { $0.milliseconds } ?? -1) ms, remaining \(scheduler.remainingBytes) in ~\(scheduler.remainingExtents) extents; model \(modelSummary(scheduler.costModel)); predicted \(scheduler.predictedDowntime.map { $0.milliseconds } ?? -1) ms")
    }

    func modelSummary(_ m: TransferCostModel) -> String {
        let us = { (x: Double) in Int((x * 1e6).rounded()) }
        let perByte = m.perByte.map { "\(us($0 * 1048576)) µs/MiB" } ?? "-"
        return "\(Int((m.perExtent * 1e9).rounded())) ns/extent, \(perByte), wire \(m.wireRate.map { Int($0 / 1048576) } ?? -1) MiB/s at ratio \(m.wireRatio ?? -1)"
    }
}

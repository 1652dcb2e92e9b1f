import Synchronization
import DSSupport
import DSWire
import DSTransport
import DSDevices

extension SourceRun {
    var switchoverTrace: Trace { Trace(start: downtimeStart ?? start, on: configuration.trace, warn: warn) }

    /// complete_precopy: every device to STOP_COPY (the downtime starts when the first leaves a
    /// running state), the rest of the state as one unthrottled round, each device's config and
    /// end of state, and every channel's end.
    mutating func stopCopy(after rounds: Int) throws(TransferError) {
        downtimeStart = Monotonic.now
        let trace = switchoverTrace
        try eachSaver { s throws(DeviceError) in _ = try s.enterStopCopy() }
        trace.mark("devices in STOP_COPY")
        try onChannel0 { ch throws(TransferError) in try ch.sendControl(.switchover) }
        let (planned, streams) = try plan(savers)
        trace.mark("stop-copy planned (\(planned.items.count) frames, \(planned.extents.count) extents)")
        feedback.sent(round: UInt32(rounds + 1))
        let (bytes, wire) = try roundSender().send(planned, streams: streams, flags: [.stopCopy], iteration: rounds + 1, pacer: nil)
        report.stopcopyBytes = bytes
        trace.mark("stop-copy data sent (\(bytes) bytes, \(wire) on the wire, \(planned.items.count) frames)")
        let savers = self.savers, counters = self.counters
        try onChannel0 { ch throws(TransferError) in
            for s in savers {
                let config: [UInt8]
                do throws(DeviceError) { config = try s.device.saveConfig() } catch { throw TransferError(.device, error.message) }
                try ch.sendControl(.configState, stream: UInt16(s.id), payload: config)
                try ch.sendControl(.endOfState, stream: UInt16(s.id), payload: counters.totals(device: s.id).encoded())
            }
        }
        trace.mark("config and end of state sent")
        feedback.stateSent()
        guard let group else { throw TransferError(.aborted, "the migration's channels are closed") }
        try group.run { (_, ch) throws(TransferError) in
            try ch.sendControl(.channelEnd, payload: ChannelEnd(chunks: ch.stats.chunks, rawBytes: ch.stats.rawBytes).encoded())
        }
        trace.mark("channel ends sent")
        passed(.stateSent)
    }

    /// Two-phase handover: the destination has loaded and validated everything (its devices wait
    /// in STOP); only then does the source give its devices up, for good, with `commit`.
    mutating func handover() throws(TransferError) {
        let trace = switchoverTrace
        let loaded = try feedback.waitLoaded(timeout: options.timeout)
        trace.mark("destination loaded (load \(loaded.loadMilliseconds) ms, validation \(loaded.validateMilliseconds) ms)")
        passed(.loadedReceived)
        if let e = abort.error { throw e }
        guard feedback.mayCommit else {
            throw TransferError(.protocolViolation, "the destination's handover went out of order before commit")
        }
        // The point of no return: from the moment `commit` may be on the wire, restarting the
        // source devices could run them twice. A cancel before this point wins; after it, it is
        // only reported.
        guard control.commit() else { throw SessionControl.cancelError }
        committed = true
        feedback.commitSent()
        try onChannel0 { ch throws(TransferError) in try ch.sendControl(.commit) }
        passed(.commitSent)
        let resumed = try feedback.waitResumed(timeout: options.timeout)
        report.downtime = Monotonic.now - (downtimeStart ?? start)
        control.update { [downtime = report.downtime] in $0.downtime = downtime }
        trace.mark("destination resumed (resume \(resumed.resumeMilliseconds) ms)")
        passed(.resumedReceived)
        report.destinationLoadTime = .microseconds(safeMicros(loaded.loadMilliseconds))
        report.destinationResumeTime = .microseconds(safeMicros(resumed.resumeMilliseconds))
    }

    /// Proof: the destination's digests against the source's (both devices are stopped now, or
    /// running without a workload on the destination), then the summary for the destination's
    /// report, then the source devices' cleanup.
    mutating func verify() throws(TransferError) {
        let dest = try feedback.waitDigests(timeout: options.timeout + .seconds(60))
        var sourceDigests: [UInt64?] = []
        for s in savers {
            report.devices[s.id].bytes = counters.totals(device: s.id).bytes
            emit(.deviceProgress(device: s.id, bytes: report.devices[s.id].bytes))
            let d = try? s.device.digest()
            sourceDigests.append(d)
            report.devices[s.id].sourceDigest = d
            report.devices[s.id].destinationDigest = s.id < dest.digests.count ? dest.digests[s.id] : nil
        }
        let summary = MigrationSummary(downtime: report.downtime ?? .zero, expectedDowntime: report.expectedDowntime,
                                       downtimeLimit: configuration.downtimeLimit, iterations: report.iterations,
                                       precopyBytes: report.precopyBytes, stopcopyBytes: report.stopcopyBytes,
                                       sourceDigests: sourceDigests)
        // The summary only informs the destination's report: its loss fails nothing.
        feedback.summarySent()
        try? onChannel0 { ch throws(TransferError) in try ch.sendControl(.endOfStream, payload: summary.encoded()) }
        report.wireBytes = wireBytes()
        guard dest.digests.count == savers.count else {
            throw TransferError(.protocolViolation, "the destination reported \(dest.digests.count) digests for \(savers.count) devices")
        }
        for s in savers { try Self.compare(report.devices[s.id], spec: s.device.spec) }
        try eachSaver { s throws(DeviceError) in try s.cleanup(success: true) }
    }

    /// Fails when the destination could not digest a device the source could, or the two differ.
    static func compare(_ d: DeviceReport, spec: String) throws(TransferError) {
        if d.sourceDigest != nil && d.destinationDigest == nil {
            throw TransferError(.corruption, "device \(d.id) (\(spec)): the destination could not digest its state, so the copy is unverified")
        }
        if let src = d.sourceDigest, let dst = d.destinationDigest, src != dst {
            throw TransferError(.corruption, "device \(d.id) (\(spec)): the destination's state digest \(Hex.digest(dst)) differs from the source's \(Hex.digest(src))")
        }
    }

    /// Wire bytes over every channel.
    func wireBytes() -> UInt64 { (group?.wireBytes() ?? 0) + feedback.receivedBytes }
}

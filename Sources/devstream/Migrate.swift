import ArgumentParser
import DeviceStream
import DSSimulation
import Foundation
import Glibc
import DSSupport
import DSCLISupport
import DSWire
import DSCodec
import DSRing
import DSTransport
import DSDevices
import DSScheduler

/// Options of the source side of a migration.
struct MigrationOptions: ParsableArguments {
    @Option(help: "The downtime budget switchover must fit (e.g. 300ms).") var downtimeLimit: String = "300ms"
    @Option(help: "Pre-copy bandwidth cap in bytes per second (e.g. 200M); switchover is unthrottled.") var maxBandwidth: String?
    @Option(help: "When pre-copy does not converge: wait (until --deadline), switchover, or abort.") var onNonconvergence: String = "wait"
    @Option(help: "Give up (or switch over, per policy) this long after the start.") var deadline: String = "60s"

    func configuration(_ data: TransferOptions) throws -> MigrationConfiguration {
        try makeMigrationConfiguration(data, downtimeLimit: downtimeLimit, maxBandwidth: maxBandwidth,
                                       onNonconvergence: onNonconvergence, deadline: deadline)
    }
}

func makeMigrationConfiguration(_ data: TransferOptions, downtimeLimit: String, maxBandwidth: String? = nil,
                                onNonconvergence: String, deadline: String) throws -> MigrationConfiguration {
    var c = MigrationConfiguration()
    c.transfer = data
    // Switchover phase timings on stderr (the library reads no environment; the CLI does).
    c.trace = ProcessInfo.processInfo.environment["DEVSTREAM_TRACE"] != nil
    c.scheduler.downtimeLimit = try OptionParsing.duration(downtimeLimit, option: "--downtime-limit")
    c.scheduler.maxBandwidth = try maxBandwidth.map { try OptionParsing.rate($0, option: "--max-bandwidth") }
    guard let p = NonConvergencePolicy(rawValue: onNonconvergence) else {
        throw ValidationError("--on-nonconvergence must be wait, switchover or abort, got '\(onNonconvergence)'")
    }
    c.scheduler.policy = p
    c.scheduler.deadline = try OptionParsing.duration(deadline, option: "--deadline")
    return c
}

func openDevices(_ specs: [String], destination: Bool) throws -> [any MigratableDevice] {
    var out: [any MigratableDevice] = []
    for s in specs {
        do {
            let spec = try DeviceSpec(s)
            out.append(destination ? try spec.makeDestination(size: nil) : try spec.makeSource())
        } catch {
            for d in out { d.close() }
            throw ValidationError("--device \(s): \(error)")
        }
    }
    return out
}

/// A testing aid: `DEVSTREAM_TEST_KILL_AT=PHASE` (a `HandoverPhase` name, e.g. `commit-sent`)
/// makes this process SIGKILL itself when its end of the handover reaches PHASE, so tests can
/// kill either end at each step of the two-phase handover.
func testKillHook() throws -> HandoverPhase? {
    guard let at = ProcessInfo.processInfo.environment["DEVSTREAM_TEST_KILL_AT"] else { return nil }
    guard let phase = HandoverPhase(rawValue: at) else {
        throw ValidationError("DEVSTREAM_TEST_KILL_AT must be one of \(HandoverPhase.allCases.map(\.rawValue).joined(separator: ", ")), got '\(at)'")
    }
    return phase
}

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Live-migrate devices to a destination (devstream receive --device).")
    @Option(help: "Device spec (repeatable): sim:..., vfio-emu:..., file:PATH, vfio:PATH.") var device: [String] = []
    @Option(help: "The destination, HOST:PORT.") var to: String
    @OptionGroup var data: DataPathOptions
    @OptionGroup var migration: MigrationOptions
    @OptionGroup var security: SecurityFlags
    @Flag(help: "Print one JSON object on stdout at the end.") var json = false

    func run() throws {
        Terminal.ignoreSignals()
        guard !device.isEmpty else { throw ValidationError("give at least one --device SPEC") }
        let endpoint: Endpoint
        do { endpoint = try Endpoint.parse(to) } catch { throw ValidationError(error) }
        var transfer = try data.transferOptions()
        try security.apply(to: &transfer, endpoint: endpoint)
        let config = try migration.configuration(transfer)
        let devices = try openDevices(device, destination: false)
        defer { for d in devices { d.close() } }
        let source = MigrationSource(devices: devices, configuration: config)
        let killAt = try testKillHook()
        let ticker = json ? nil : Terminal.progressTicker(source.progress, label: "migrate: sent")
        let report = source.migrate(to: endpoint, onEvent: MigrationCLI.printer(json: json, ticker: ticker, killAt: killAt))
        ticker?.stop()
        MigrationCLI.finish(report, json: json, side: "source")
    }
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A whole live migration of a simulated device over loopback, both ends in this process.")
    @Option(help: "Device memory size.") var size: String = "1G"
    @Option(help: "Bytes per second the workload dirties while the device runs.") var dirtyRate: String = "64M"
    @Option(help: "Fraction of the memory that takes most writes.") var hot: String = "10%"
    @Option(help: "The downtime budget.") var downtimeLimit: String = "300ms"
    @Option(help: "TCP connections.") var connections: Int = 2
    @Option(help: "lz4 or none.") var compression: String = "lz4"
    @Option(help: "When pre-copy does not converge: wait, switchover, abort.") var onNonconvergence: String = "wait"
    @Option(help: "Deadline.") var deadline: String = "60s"
    @Flag(help: "Print one JSON object on stdout at the end.") var json = false

    func run() throws {
        Terminal.ignoreSignals()
        // Both ends are in this process: they share a fresh random key, which never touches a file.
        var transfer = try makeTransferOptions(connections: connections, compression: compression)
        do { transfer.security = try SecurityOptions.randomKey() } catch { throw ValidationError(error) }
        let config = try makeMigrationConfiguration(transfer, downtimeLimit: downtimeLimit, onNonconvergence: onNonconvergence, deadline: deadline)
        let rate = dirtyRate.hasSuffix("/s") ? String(dirtyRate.dropLast(2)) : dirtyRate
        let spec = "sim:size=\(size),dirty-rate=\(rate),hot=\(hot),profile=mixed,seed=1"
        if !json { Terminal.line("demo: creating \(spec) and an empty destination of the same size") }
        let source = try openDevices([spec], destination: false)
        let dest = try openDevices(["sim:size=\(size)"], destination: true)
        defer { for d in source + dest { d.close() } }
        let destination: MigrationDestination
        do { destination = try MigrationDestination(listen: Endpoint(host: "127.0.0.1", port: 0), devices: dest, options: config.transfer, warn: { _ in }) } catch {
            throw ValidationError(error)
        }
        if !json { Terminal.line("demo: destination listening on \(destination.listener.endpoint); migrating with a \(downtimeLimit) downtime limit") }
        nonisolated(unsafe) var destReport: MigrationReport?
        let t: OSThread
        do { t = try OSThread(name: "ds-demo-dest") { destReport = destination.run(acceptTimeout: .seconds(30)) } } catch {
            throw ValidationError("cannot start the destination's thread: \(error)")
        }
        let migration = MigrationSource(devices: source, configuration: config)
        let ticker = json ? nil : Terminal.progressTicker(migration.progress, label: "demo: sent")
        let report = migration.migrate(to: destination.listener.endpoint, onEvent: MigrationCLI.printer(json: json, ticker: ticker))
        ticker?.stop()
        t.join()
        var r = report
        if let d = destReport, !d.completed, r.completed {
            r.completed = false
            r.error = d.error
        }
        // The demo's own proof: every destination digest equals its source's.
        let allEqual = r.devices.allSatisfy { $0.sourceDigest != nil && $0.sourceDigest == $0.destinationDigest }
        if r.completed && !allEqual {
            r.completed = false
            r.error = TransferError(.corruption, "a destination digest differs from its source's")
        }
        MigrationCLI.finish(r, json: json, side: "demo")
    }
}

enum MigrationCLI {
    /// Iteration lines on stderr; on a terminal the live line (`ticker`) is cleared first.
    /// - Parameter killAt: a testing aid (`DEVSTREAM_TEST_KILL_AT`): SIGKILL this process when
    ///   its end of the handover reaches that phase.
    static func printer(json: Bool, ticker: Terminal.Ticker? = nil, killAt: HandoverPhase? = nil) -> @Sendable (MigrationEvent) -> Void {
        { event in
            if case .handover(let phase) = event, phase == killAt { raise(SIGKILL) }
            guard !json else { return }
            ticker?.clearLine()
            switch event {
            case .setupDone(let d):
                Terminal.line(String(format: "setup done in %.1f ms", d.milliseconds))
            case .iteration(let r):
                let bw = r.bandwidth.map { Format.rate($0) } ?? "-"
                let pred = r.predictedDowntime.map { String(format: "%.1f ms", $0.milliseconds) } ?? "-"
                Terminal.line("iteration \(r.iteration): dirty \(Format.bytes(r.dirtyBytes)), sent \(Format.bytes(r.sentBytes)) (\(Format.bytes(r.wireBytes)) on the wire) in \(String(format: "%.0f", r.duration.milliseconds)) ms, \(Format.bytes(r.remainingBytes)) left, bandwidth \(bw), predicted downtime \(pred)")
            case .switchover(let p, let reason):
                Terminal.line("switchover (\(reason.rawValue)): predicted downtime \(p.map { String(format: "%.1f ms", $0.milliseconds) } ?? "-")")
            case .readyToSwitchover, .roundLoaded, .handover, .deviceProgress, .warning:
                break  // warnings already went to stderr through the session's warn
            }
        }
    }

    /// - Parameter oneTimeKey: the key `receive` made (and `--key-out`), written once listening.
    static func receive(endpoint: Endpoint, devices specs: [String], options: TransferOptions,
                        oneTimeKey: (SecurityOptions, String?)?, json: Bool) throws {
        // Every spec is checked before listening; the devices are made once the source's
        // headers give their sizes.
        let parsed = try specs.map { s in
            do {
                let spec = try DeviceSpec(s)
                try spec.checkDestination()
                return spec
            } catch { throw ValidationError("--device \(s): \(error)") }
        }
        let makeDevice: MigrationDestination.DeviceFactory = { (index, size) throws(DeviceError) in
            try parsed[index].makeDestination(size: size)
        }
        let destination: MigrationDestination
        let key: ReceiverKey?
        do {
            destination = try MigrationDestination(listen: endpoint, deviceCount: parsed.count, makeDevice: makeDevice, options: options)
            key = try oneTimeKey.map { (o, out) throws(TransferError) in try ReceiverKey.write(o, to: out, listening: destination.listener.endpoint) }
        } catch {
            Report.fail(error, json: json, extra: ["protection": options.protection.rawValue])
        }
        let killAt = try testKillHook()
        Terminal.announce("listening on \(destination.listener.endpoint)")
        key?.announce(sendVerb: "migrate")
        let report = destination.run(onEvent: MigrationCLI.printer(json: true, killAt: killAt))
        key?.remove()
        // Before `finish` exits: a `file:` destination that never reached RUNNING removes its
        // PATH.partial on close.
        destination.closeDevices()
        finish(report, json: json, side: "destination")
    }

    static func finish(_ r: MigrationReport, json: Bool, side: String) -> Never {
        if json { Report.json(r.jsonObject) }
        if r.completed {
            var line = "devstream: migration completed in \(String(format: "%.2f", r.totalTime.seconds)) s"
            if let d = r.downtime { line += String(format: ", downtime %.1f ms", d.milliseconds) }
            if let e = r.expectedDowntime { line += String(format: " (predicted %.1f ms", e.milliseconds) + String(format: ", limit %.0f ms)", r.downtimeLimit.milliseconds) }
            line += ", \(r.iterations) iterations, pre-copy \(Format.bytes(r.precopyBytes)), stop-copy \(Format.bytes(r.stopcopyBytes)), \(r.protection.rawValue)"
            if !json { Terminal.line(line) }
            var costs: [String] = []
            if let s = r.destinationSetupTime { costs.append(String(format: "destination setup %.1f ms", s.milliseconds)) }
            if let t = r.roundTrip { costs.append(String(format: "round trip %.2f ms", t.milliseconds)) }
            if let t = r.destinationResumeTime { costs.append(String(format: "destination resume %.2f ms", t.milliseconds)) }
            if !json && !costs.isEmpty { Terminal.line("  " + costs.joined(separator: ", ")) }
            for d in r.devices where !json {
                let s = d.sourceDigest.map(TransferDigest.hex) ?? "-", t = d.destinationDigest.map(TransferDigest.hex) ?? "-"
                Terminal.line("  device \(d.id) \(d.spec): \(Format.bytes(d.bytes)) moved, source xxh3 \(s), destination xxh3 \(t)\(s == t && s != "-" ? " (equal)" : "")")
            }
            exit(0)
        }
        if let e = r.error { Report.errorLine(e) } else { Report.errorLine("migration failed") }
        exit(1)
    }
}

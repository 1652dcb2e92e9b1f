import Testing
import Glibc
import Synchronization
@testable import DeviceStream
import DSSimulation
import DSSupport
import DSTransport
import DSWire
import DSCodec
import DSRing
import DSDevices
import DSScheduler

/// The VMM's controls over a running session: cancel, external switchover, its own pending
/// bytes, held resume, live statistics, events at both ends, sockets it hands in.
@Suite(.serialized) struct ControlTests {
    /// A source and destination in this process; `sourceEvents`/`destinationEvents` see every
    /// event with the session objects, so a test can act at a given point.
    func migrate(_ config: MigrationConfiguration, size: Int = 16 << 20, dirtyRate: UInt64 = 8 << 20,
                 resumeHold: Duration? = nil,
                 sourceEvents: @escaping @Sendable (MigrationEvent, MigrationSource, MigrationDestination) -> Void = { _, _, _ in },
                 destinationEvents: @escaping @Sendable (MigrationEvent, MigrationSource, MigrationDestination) -> Void = { _, _, _ in })
        throws -> (source: MigrationReport, destination: MigrationReport, src: SimulatedDevice, dst: SimulatedDevice) {
        let src = try SimulatedDevice(size: UInt64(size), dirtyRate: dirtyRate, profile: .mixed, seed: 11)
        let dst = try SimulatedDevice(destinationSize: UInt64(size))
        let destination = try MigrationDestination(listen: Endpoint(host: "127.0.0.1", port: 0), devices: [dst],
                                                   options: config.transfer, warn: { _ in })
        destination.resumeHold = resumeHold
        let source = MigrationSource(devices: [src], configuration: config, warn: { _ in })
        let d = Mutex<MigrationReport?>(nil)
        let t = try OSThread(name: "ds-test") {
            let r = destination.run(acceptTimeout: .seconds(10)) { destinationEvents($0, source, destination) }
            d.withLock { $0 = r }
        }
        let s = source.migrate(to: destination.listener.endpoint) { sourceEvents($0, source, destination) }
        t.join()
        return (s, d.withLock { $0! }, src, dst)
    }

    @Test func cancelBeforeCommitRestartsTheSourceAndNeverRunsTheDestination() throws {
        let (s, d, src, dst) = try migrate(migrationConfig(), sourceEvents: { e, source, _ in
            if case .iteration(let r) = e, r.iteration == 1 { #expect(source.cancel()) }
        })
        defer { src.close(); dst.close() }
        #expect(!s.completed && s.error?.code == .cancelled, "\(String(describing: s.error))")
        #expect(src.state == .running)
        #expect(!d.completed)
        #expect(dst.state != .running)
        #expect(!s.cancelledAfterCommit)
    }

    @Test func cancelAfterCommitIsReportedNeverUndone() throws {
        let (s, d, src, dst) = try migrate(migrationConfig(), sourceEvents: { e, source, _ in
            if case .handover(.commitSent) = e { #expect(!source.cancel()) }
        })
        defer { src.close(); dst.close() }
        #expect(s.completed, "\(String(describing: s.error))")
        #expect(d.completed)
        #expect(s.cancelledAfterCommit)
        #expect(dst.state == .running && src.state == .stop)
        #expect(try src.digest() == dst.digest())
    }

    /// `wire_bytes` counts every frame after admission, both ways, at both ends (WIRE.md, "Wire
    /// bytes"): the destination's control replies (pongs, loaded, resumed, ack) and the frames
    /// the source's feedback reader takes count too, so a completed migration reports one
    /// figure at both ends (they differed by those frames).
    @Test(arguments: [1, 3]) func bothEndsReportTheSameWireBytes(connections: Int) throws {
        let (s, d, src, dst) = try migrate(migrationConfig(connections: connections))
        defer { src.close(); dst.close() }
        #expect(s.completed && d.completed, "\(String(describing: s.error ?? d.error))")
        #expect(s.wireBytes > 0)
        #expect(s.wireBytes == d.wireBytes, "source \(s.wireBytes), destination \(d.wireBytes)")
    }

    @Test func destinationCancelBeforeCommitLeavesItsDevicesStopped() throws {
        let (s, d, src, dst) = try migrate(migrationConfig(), destinationEvents: { e, _, destination in
            if case .setupDone = e { #expect(destination.cancel()) }
        })
        defer { src.close(); dst.close() }
        #expect(d.error?.code == .cancelled, "\(String(describing: d.error))")
        #expect(!s.completed)
        #expect(src.state == .running, "the source restarts: it never committed")
        #expect(dst.state != .running)
    }

    @Test func aDestinationWaitingForItsSourceCanBeCancelled() throws {
        let dst = try SimulatedDevice(destinationSize: 1 << 20)
        defer { dst.close() }
        let destination = try MigrationDestination(listen: Endpoint(host: "127.0.0.1", port: 0), devices: [dst],
                                                   options: migrationConfig().transfer, warn: { _ in })
        let t = try OSThread(name: "ds-test") { sleep(for: .milliseconds(100)); destination.cancel() }
        let t0 = Monotonic.now
        let r = destination.run(acceptTimeout: .seconds(20))
        t.join()
        #expect(r.error?.code == .cancelled)
        #expect(Monotonic.now - t0 < .seconds(10))
    }

    @Test func externalSwitchoverWaitsForTheCaller() throws {
        var config = migrationConfig()
        config.scheduler.switchover = .external
        let readies = Atomic<Int>(0)
        let (s, d, src, dst) = try migrate(config, sourceEvents: { e, source, _ in
            guard case .readyToSwitchover = e else { return }
            // Let two ready rounds go by: the session must keep iterating until told.
            if readies.add(1, ordering: .relaxed).newValue == 2 {
                #expect(source.statistics.phase == .readyToSwitchover)
                source.switchover()
            }
        })
        defer { src.close(); dst.close() }
        #expect(s.completed && d.completed, "\(String(describing: s.error)) \(String(describing: d.error))")
        #expect(s.switchoverReason == .requested)
        #expect(readies.load(ordering: .relaxed) >= 2)
        #expect(try src.digest() == dst.digest())
    }

    @Test func theVMMsPendingBytesShareTheBudget() throws {
        // Without them this converges at once; with 4 GiB of the VMM's own state to move in the
        // downtime, no prediction fits 300 ms and the abort policy stays on the source.
        var config = migrationConfig(policy: .abort, deadline: .seconds(3))
        config.scheduler.switchover = .automatic
        let (s, _, src, dst) = try migrate(config, dirtyRate: 0, sourceEvents: { e, source, _ in
            if case .setupDone = e { source.externalPendingBytes = 4 << 30 }
        })
        defer { src.close(); dst.close() }
        #expect(!s.completed && s.error?.code == .aborted, "\(String(describing: s.error))")
        #expect(src.state == .running)
        let (s2, _, src2, dst2) = try migrate(config, dirtyRate: 0)
        defer { src2.close(); dst2.close() }
        #expect(s2.completed, "\(String(describing: s2.error))")
    }

    @Test func heldResumeWaitsForTheCaller() throws {
        let resumedAt = Mutex<Duration?>(nil)
        // The resuming thread is joined below (ThreadSanitizer reports a thread never joined).
        let resumer = Mutex<OSThread?>(nil)
        let (s, d, src, dst) = try migrate(migrationConfig(), resumeHold: .seconds(3), destinationEvents: { e, _, destination in
            guard case .handover(.commitReceived) = e else { return }
            let t = try? OSThread(name: "ds-test") {
                sleep(for: .milliseconds(200))
                resumedAt.withLock { $0 = Monotonic.now }
                destination.resume()
            }
            resumer.withLock { $0 = t }
        })
        // Taken out, then joined: the thread's closure holds the destination, which must go.
        resumer.withLock { t in defer { t = nil }; return t }?.join()
        defer { src.close(); dst.close() }
        #expect(s.completed && d.completed, "\(String(describing: s.error)) \(String(describing: d.error))")
        #expect(resumedAt.withLock { $0 } != nil)
        #expect((s.downtime ?? .zero) >= .milliseconds(200), "the downtime includes the hold")
        #expect(dst.state == .running)
    }

    /// Waiting on the caller (a resume hold, an external switchover) registers a waker with the
    /// session's abort signal, which the control holds: a waker that held the control made a
    /// cycle, and the control, the signal and everything it watches outlived every such session
    /// (LeakSanitizer found it; this checks it without one).
    @Test func waitingOnTheCallerLeavesNoCycle() {
        weak var control: SessionControl?
        weak var signal: AbortSignal?
        do {
            let c = SessionControl(), a = AbortSignal(side: "source")
            c.attach(a)
            c.requestSwitchover()
            #expect(throws: Never.self) { try c.waitForSwitchover(abort: a) }
            #expect(!c.waitForResume(timeout: .milliseconds(1), abort: a))
            control = c
            signal = a
        }
        #expect(control == nil, "the session control outlived its session")
        #expect(signal == nil, "the abort signal outlived its session")
    }

    /// A destination or receiver made and dropped without a session stops its listener: the
    /// listener's accept and admission threads hold the listener, so without the owner's
    /// `deinit` it (and those threads) outlived its owner (ThreadSanitizer's thread-leak report
    /// found it).
    @Test func aListenerWhoseOwnerGoesAwayStops() throws {
        weak var viaDestination: SessionListener?
        weak var viaReceiver: SessionListener?
        var options = TransferOptions()
        options.allowInsecure = true
        do {
            let d = try MigrationDestination(listen: Endpoint(host: "127.0.0.1", port: 0), devices: [], options: options, warn: { _ in })
            let r = try TransferReceiver(listen: Endpoint(host: "127.0.0.1", port: 0), options: options, warn: { _ in })
            viaDestination = d.listener
            viaReceiver = r.listener
        }
        #expect(viaDestination == nil, "a dropped MigrationDestination left its listener running")
        #expect(viaReceiver == nil, "a dropped TransferReceiver left its listener running")
    }

    @Test func aResumeHoldThatRunsOutLeavesBothEndsStopped() throws {
        let (s, d, src, dst) = try migrate(migrationConfig(), resumeHold: .milliseconds(200))
        defer { src.close(); dst.close() }
        #expect(d.error?.code == .timeout, "\(String(describing: d.error))")
        #expect(!s.completed)
        // The source passes on the destination's reason (not a handover violation).
        #expect(s.error?.code == .remote && s.error?.message.contains("resume() was not called") == true, "\(String(describing: s.error))")
        #expect(dst.state != .running && src.state != .running, "after commit neither end runs")
    }

    @Test func statisticsAreLiveAndEventsComeFromBothEnds() throws {
        let sourceSeen = Mutex<[String]>([]), destinationSeen = Mutex<[String]>([])
        let precopyStats = Mutex<MigrationStatistics?>(nil)
        let (s, d, src, dst) = try migrate(migrationConfig(), sourceEvents: { e, source, _ in
            sourceSeen.withLock { $0.append(Self.name(e)) }
            if case .iteration = e, precopyStats.withLock({ $0 == nil }) { precopyStats.withLock { $0 = source.statistics } }
        }, destinationEvents: { e, _, _ in destinationSeen.withLock { $0.append(Self.name(e)) } })
        defer { src.close(); dst.close() }
        #expect(s.completed && d.completed)
        let p = try #require(precopyStats.withLock { $0 })
        #expect(p.phase == .precopy && p.iterations == 1 && p.transferredBytes >= 16 << 20 && p.setupTime != nil)
        let src0 = sourceSeen.withLock { $0 }, dst0 = destinationSeen.withLock { $0 }
        for e in ["setupDone", "iteration", "switchover", "handover", "deviceProgress"] { #expect(src0.contains(e), "\(e)") }
        for e in ["setupDone", "roundLoaded", "handover", "deviceProgress"] { #expect(dst0.contains(e), "\(e)") }
    }

    @Test func aDeviceErrorKeepsItsCode() throws {
        // A destination whose device is smaller than the source's: refused at load setup.
        let src = try SimulatedDevice(size: 2 << 20, dirtyRate: 0, seed: 1)
        let dst = try SimulatedDevice(destinationSize: 1 << 20)
        defer { src.close(); dst.close() }
        let (_, d) = try runMigration([src], [dst], migrationConfig())
        #expect(d.error?.code == .device)
        #expect((d.error?.cause as? DeviceError)?.code == .unsupported, "\(String(describing: d.error))")
    }

    @Test func sessionsOverSocketsTheCallerHandsIn() throws {
        var pairs: [[Int32]] = []
        for _ in 0..<2 {
            var sv: [Int32] = [0, 0]
            #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0)
            pairs.append(sv)
        }
        let handedIn = pairs.joined().map { OpenFile(fd: $0) }
        let src = try SimulatedDevice(size: 8 << 20, dirtyRate: 4 << 20, seed: 3)
        let dst = try SimulatedDevice(destinationSize: 8 << 20)
        defer { src.close(); dst.close() }
        let config = migrationConfig(connections: 2)
        let destination = try MigrationDestination(adopting: pairs.map { $0[1] }, devices: [dst], options: config.transfer, warn: { _ in })
        let d = Mutex<MigrationReport?>(nil)
        let t = try OSThread(name: "ds-test") { let r = destination.run(acceptTimeout: .seconds(10)); d.withLock { $0 = r } }
        let s = MigrationSource(devices: [src], configuration: config, warn: { _ in }).migrate(over: pairs.map { $0[0] })
        t.join()
        #expect(s.completed, "\(String(describing: s.error))")
        #expect(d.withLock { $0?.completed } == true)
        #expect(try src.digest() == dst.digest())
        // The session took the descriptors: they are closed now.
        for f in handedIn { #expect(f.isClosed, "descriptor \(f.fd) is still open") }
    }

    @Test func handedInSocketsAreChecked() throws {
        var p: [Int32] = [0, 0]
        #expect(pipe(&p) == 0)
        let readEnd = OpenFile(fd: p[0])
        let src = try SimulatedDevice(size: 1 << 20, dirtyRate: 0, seed: 3)
        defer { src.close(); close(p[1]) }
        let r = MigrationSource(devices: [src], configuration: migrationConfig(connections: 1), warn: { _ in }).migrate(over: [p[0]])
        #expect(r.error?.code == .usage, "\(String(describing: r.error))")
        #expect(r.error?.hint != nil)
        #expect(src.state == .running)
        #expect(readEnd.isClosed, "a refused descriptor is closed too: the session took it")
    }

    /// A descriptor and the file it names. Tests run in parallel, so once the session closes a
    /// descriptor another test may get the same number at once: closed means the number no
    /// longer names this file (device and inode), not that it is free.
    struct OpenFile {
        let fd: Int32, dev: UInt64, ino: UInt64
        init(fd: Int32) {
            var st = stat()
            _ = fstat(fd, &st)
            (self.fd, dev, ino) = (fd, UInt64(st.st_dev), UInt64(st.st_ino))
        }
        var isClosed: Bool {
            var st = stat()
            return fstat(fd, &st) != 0 || UInt64(st.st_dev) != dev || UInt64(st.st_ino) != ino
        }
    }

    static func name(_ e: MigrationEvent) -> String {
        switch e {
        case .setupDone: "setupDone"
        case .iteration: "iteration"
        case .roundLoaded: "roundLoaded"
        case .readyToSwitchover: "readyToSwitchover"
        case .switchover: "switchover"
        case .handover: "handover"
        case .deviceProgress: "deviceProgress"
        case .warning: "warning"
        }
    }
}

/// The async faces of the blocking calls: the sessions run off the cooperative pool, and a
/// cancelled task cancels its session.
@Suite(.serialized) struct AsyncSessionTests {
    @Test func asyncMigrationCompletes() async throws {
        let src = try SimulatedDevice(size: 4 << 20, dirtyRate: 1 << 20, seed: 5)
        let dst = try SimulatedDevice(destinationSize: 4 << 20)
        defer { src.close(); dst.close() }
        // A generous stall timeout: the test runner's cooperative threads may all be busy with
        // other (blocking) tests for a while; the sessions themselves never use them.
        let config = migrationConfig(timeout: .seconds(30))
        let destination = try MigrationDestination(listen: Endpoint(host: "127.0.0.1", port: 0), devices: [dst],
                                                   options: config.transfer, warn: { _ in })
        let d = Mutex<MigrationReport?>(nil)
        let t = try OSThread(name: "ds-test") { let r = destination.run(acceptTimeout: .seconds(30)); d.withLock { $0 = r } }
        let s = await MigrationSource(devices: [src], configuration: config, warn: { _ in }).migrate(to: destination.endpoint)
        t.join()
        let dr = try #require(d.withLock { $0 })
        #expect(s.completed && dr.completed, "\(String(describing: s.error)) \(String(describing: dr.error))")
        #expect(try src.digest() == dst.digest())
    }

    @Test func cancellingTheTaskCancelsTheWaitingDestination() async throws {
        let dst = try SimulatedDevice(destinationSize: 1 << 20)
        defer { dst.close() }
        let destination = try MigrationDestination(listen: Endpoint(host: "127.0.0.1", port: 0), devices: [dst],
                                                   options: migrationConfig().transfer, warn: { _ in })
        let task = Task { await destination.run(acceptTimeout: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(100))
        task.cancel()
        let r = await task.value
        #expect(r.error?.code == .cancelled, "\(String(describing: r.error))")
    }
}

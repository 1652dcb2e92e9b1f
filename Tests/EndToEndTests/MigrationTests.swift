import Testing
import Glibc
import Foundation
import DSTestSupport
@testable import DeviceStream
import DSSimulation
import DSSupport
import DSWire
import DSCodec
import DSRing
import DSTransport
import DSDevices
import DSScheduler

func migrationConfig(connections: Int = 2, limit: Duration = .milliseconds(300), policy: NonConvergencePolicy = .wait,
                     deadline: Duration = .seconds(20), timeout: Duration = .seconds(5)) -> MigrationConfiguration {
    var c = MigrationConfiguration()
    // Plaintext, explicitly: these tests are about migration (some change frames on the wire);
    // the TLS tests set a key.
    c.transfer.allowInsecure = true
    c.transfer.connections = connections
    c.transfer.timeout = timeout
    c.scheduler.downtimeLimit = limit
    c.scheduler.policy = policy
    c.scheduler.deadline = deadline
    return c
}

/// Runs a destination on a thread and a source here.
func runMigration(_ sources: [any MigratableDevice], _ dests: [any MigratableDevice], _ config: MigrationConfiguration,
                  via proxy: FaultProxy.Fault? = nil) throws -> (source: MigrationReport, destination: MigrationReport) {
    let destination = try MigrationDestination(listen: Endpoint(host: "127.0.0.1", port: 0), devices: dests, options: config.transfer, warn: { _ in })
    var target = destination.listener.endpoint
    var p: FaultProxy?
    if let proxy {
        p = try FaultProxy(to: target, fault: proxy)
        target = p!.endpoint
    }
    nonisolated(unsafe) var d: MigrationReport?
    let t = try OSThread(name: "ds-test") { d = destination.run(acceptTimeout: .seconds(10)) }
    let s = MigrationSource(devices: sources, configuration: config, warn: { _ in }).migrate(to: target)
    t.join()
    p?.join()
    return (s, d!)
}

@Suite(.serialized) struct MigrationTests {
    @Test(arguments: [1, 3])
    func simulatedDeviceUnderLoad(connections: Int) throws {
        let src = try SimulatedDevice(size: 32 << 20, dirtyRate: 16 << 20, profile: .mixed, seed: 4)
        let dst = try SimulatedDevice(destinationSize: 32 << 20)
        defer { src.close(); dst.close() }
        let (s, d) = try runMigration([src], [dst], migrationConfig(connections: connections))
        #expect(s.completed, "\(s.error?.message ?? "")")
        #expect(d.completed, "\(d.error?.message ?? "")")
        #expect(s.devices[0].sourceDigest != nil && s.devices[0].sourceDigest == s.devices[0].destinationDigest)
        #expect(try src.digest() == dst.digest())
        #expect(src.state == .stop && dst.state == .running)
        #expect(s.downtime != nil && s.iterations >= 1)
        #expect(s.precopyBytes >= 32 << 20)
        // Both ends report the same downtime (the source's measurement).
        #expect(abs(((d.downtime ?? .zero) - (s.downtime ?? .seconds(9))).seconds) < 0.001)
        #expect(d.devices[0].sourceDigest == s.devices[0].sourceDigest)
        // Plaintext by explicit choice (allowInsecure): the reports say so.
        #expect(s.protection == .insecure && d.protection == .insecure)
    }

    /// Several devices of every kind in one session.
    @Test func mixedDevices() throws {
        let path = "/tmp/dsmig-\(getpid())-file", out = "/tmp/dsmig-\(getpid())-file-out"
        defer { unlink(path); unlink(out) }
        _ = FileManager.default.createFile(atPath: path, contents: Data(testData(2_000_000, seed: 8)))
        let sources: [any MigratableDevice] = [
            try SimulatedDevice(size: 16 << 20, dirtyRate: 8 << 20, seed: 1),
            try EmulatedVFIODevice(size: 8 << 20, dirtyRate: 4 << 20, seed: 2),
            try FileDevice(sourcePath: path),
        ]
        let dests: [any MigratableDevice] = [
            try SimulatedDevice(destinationSize: 16 << 20),
            try EmulatedVFIODevice(destinationSize: 8 << 20),
            try FileDevice(destinationPath: out, size: 2_000_000),
        ]
        defer { for d in sources + dests { d.close() } }
        let (s, d) = try runMigration(sources, dests, migrationConfig(connections: 2))
        #expect(s.completed && d.completed, "\(s.error?.message ?? "") \(d.error?.message ?? "")")
        for i in 0..<3 {
            #expect(s.devices[i].sourceDigest != nil)
            #expect(s.devices[i].sourceDigest == s.devices[i].destinationDigest)
        }
        #expect(dests.allSatisfy { $0.state == .running })
    }

    /// The destination goes away during pre-copy: the source device runs again, workload and all.
    @Test func destinationKilledDuringPrecopy() throws {
        let src = try SimulatedDevice(size: 32 << 20, dirtyRate: 64 << 20, hotFraction: 1.0, seed: 5)
        let dst = try SimulatedDevice(destinationSize: 32 << 20)
        defer { src.close(); dst.close() }
        var config = migrationConfig(connections: 1)
        config.scheduler.maxBandwidth = 40 << 20  // keep pre-copy going long enough to be cut
        let t0 = Monotonic.now
        let (s, d) = try runMigration([src], [dst], config, via: .kill(after: 20 << 20))
        #expect(!s.completed)
        #expect(Monotonic.now - t0 < .seconds(10))
        #expect(s.error?.message.contains("RUNNING again on the source") == true, "\(s.error?.message ?? "")")
        #expect(src.state == .running)
        let before = try src.digest()
        usleep(100_000)
        #expect(try src.digest() != before)  // the workload is going again
        #expect(!d.completed)
        #expect(dst.state != .running)
    }

    /// The source goes away: the destination device is not RUNNING, and the error says so.
    @Test func sourceKilled() throws {
        let src = try SimulatedDevice(size: 32 << 20, dirtyRate: 64 << 20, hotFraction: 1.0, seed: 6)
        let dst = try SimulatedDevice(destinationSize: 32 << 20)
        defer { src.close(); dst.close() }
        var config = migrationConfig(connections: 1)
        config.scheduler.maxBandwidth = 40 << 20
        let (_, d) = try runMigration([src], [dst], config, via: .kill(after: 10 << 20))
        #expect(!d.completed)
        #expect(d.error?.message.contains("is not running") == true, "\(d.error?.message ?? "")")
        #expect(dst.state == .resuming)
    }

    /// A destination that stops reading is detected within the configured timeout.
    @Test func stalledDestination() throws {
        let src = try SimulatedDevice(size: 64 << 20, dirtyRate: 0, profile: .random, seed: 7)
        defer { src.close() }
        let (lfd, port) = try Sockets.listen(Endpoint(host: "127.0.0.1", port: 0))
        defer { close(lfd) }
        let t = try OSThread(name: "ds-test") {
            let c = accept(lfd, nil, nil)
            var buf = [UInt8](repeating: 0, count: 64)
            _ = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, 64, Int32(MSG_WAITALL)) }
            sendRaw(c, ErrorMessage.acceptFrameForTests)
            // Reads the device sections, answers the setup, then never reads again.
            var junk = [UInt8](repeating: 0, count: 4096)
            _ = junk.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
            sendRaw(c, ErrorMessage.acceptFrameForTests)
            usleep(3_000_000)
            close(c)
        }
        let config = migrationConfig(connections: 1, timeout: .milliseconds(700))
        let t0 = Monotonic.now
        let s = MigrationSource(devices: [src], configuration: config, warn: { _ in }).migrate(to: Endpoint(host: "127.0.0.1", port: port))
        let took = Monotonic.now - t0
        t.join()
        #expect(!s.completed)
        #expect(s.error?.code == .timeout, "\(s.error?.message ?? "")")
        #expect(took < .seconds(3))
        #expect(src.state == .running)
    }

    /// Non-convergence under `abort`: the migration stays on the source.
    @Test func nonConvergenceAbortStaysOnSource() throws {
        let src = try SimulatedDevice(size: 32 << 20, dirtyRate: 256 << 20, hotFraction: 1.0, seed: 8)
        let dst = try SimulatedDevice(destinationSize: 32 << 20)
        defer { src.close(); dst.close() }
        var config = migrationConfig(connections: 1, limit: .milliseconds(5), policy: .abort)
        config.scheduler.maxBandwidth = 30 << 20
        let (s, d) = try runMigration([src], [dst], config)
        #expect(!s.completed)
        #expect(s.error?.code == .aborted, "\(s.error?.message ?? "")")
        #expect(s.error?.message.contains("staying on the source") == true)
        #expect(src.state == .running)
        #expect(!d.completed)
        #expect(dst.state != .running)
    }

    /// A corrupted or truncated stream during stop-copy fails the migration and never yields a
    /// RUNNING destination; the source runs again.
    @Test(arguments: [FaultProxy.Fault.flipAfterSwitchover, .truncateAfterSwitchover])
    func networkTroubleDuringStopCopy(fault: FaultProxy.Fault) throws {
        let src = try SimulatedDevice(size: 16 << 20, dirtyRate: 16 << 20, seed: 9)
        let dst = try SimulatedDevice(destinationSize: 16 << 20)
        defer { src.close(); dst.close() }
        let (s, d) = try runMigration([src], [dst], migrationConfig(connections: 1), via: fault)
        #expect(!s.completed)
        #expect(!d.completed)
        #expect(dst.state != .running)
        #expect(src.state == .running)
        #expect(d.error?.message.contains("is not running") == true, "\(d.error?.message ?? "")")
    }

    /// A stream device whose stream is cut short never resumes.
    @Test func emulatedDeviceMigratesAndValidates() throws {
        let src = try EmulatedVFIODevice(size: 4 << 20, dirtyRate: 2 << 20, seed: 3)
        let dst = try EmulatedVFIODevice(destinationSize: 4 << 20)
        defer { src.close(); dst.close() }
        let (s, d) = try runMigration([src], [dst], migrationConfig(connections: 3))
        #expect(s.completed && d.completed, "\(s.error?.message ?? "") \(d.error?.message ?? "")")
        #expect(try src.digest() == dst.digest())
    }

    @Test func deviceCountMismatchIsRefused() throws {
        let src = try SimulatedDevice(size: 4 << 20)
        let a = try SimulatedDevice(destinationSize: 4 << 20), b = try SimulatedDevice(destinationSize: 4 << 20)
        defer { src.close(); a.close(); b.close() }
        let (s, d) = try runMigration([src], [a, b], migrationConfig())
        #expect(!s.completed && !d.completed)
        #expect(d.error?.message.contains("1 device(s) but this destination has 2") == true, "\(d.error?.message ?? "")")
        #expect(src.state == .running)
    }
}

/// `--max-bandwidth` throttles pre-copy, but stop-copy runs unthrottled: the scheduler must
/// learn the real link, not the throttle, or it predicts the switchover far too long.
@Suite struct ThrottledMigrationTests {
    @Test func probeRoundsTeachTheUnthrottledBandwidth() throws {
        // Scattered dirtying (every page equally likely): rounds stay big enough to probe.
        let src = try SimulatedDevice(size: 32 << 20, dirtyRate: 16 << 20, hotFraction: 1.0, profile: .mixed, seed: 6)
        let dst = try SimulatedDevice(destinationSize: 32 << 20)
        defer { src.close(); dst.close() }
        var config = migrationConfig(limit: .milliseconds(60), policy: .switchover, deadline: .seconds(20))
        let cap: UInt64 = 32 << 20
        config.scheduler.maxBandwidth = cap
        let (s, d) = try runMigration([src], [dst], config)
        #expect(s.completed, "\(s.error?.message ?? "")")
        #expect(d.completed, "\(d.error?.message ?? "")")
        let probes = s.rounds.filter(\.unthrottledProbe)
        #expect(!probes.isEmpty, "no unthrottled probe round among \(s.rounds.count) rounds")
        // Probes are bounded bursts: at most a quarter second of the cap each.
        #expect(probes.allSatisfy { $0.sentBytes <= cap / 4 })
        // After a probe, the bandwidth the prediction uses is the link's, above the throttle
        // (loopback moves far more than 32 MiB/s).
        if let first = probes.first, let after = s.rounds.first(where: { $0.iteration == first.iteration }) {
            #expect((after.bandwidth ?? 0) > Double(cap), "bandwidth after the probe: \(after.bandwidth ?? -1)")
        }
        // No round but the probes ran faster than the cap allows (with a little slack).
        for r in s.rounds where !r.unthrottledProbe && r.sentBytes > 4 << 20 {
            #expect(Double(r.sentBytes) / r.duration.seconds <= Double(cap) * 1.2, "round \(r.iteration) ran above the cap")
        }
    }
}

import Testing
import Glibc
import DSTestSupport
@testable import DeviceStream
import DSSimulation
import DSSupport

/// A migration that cannot get a thread or memory fails with an error that says so, and the
/// devices end where a failed migration leaves them: the source RUNNING, the destination not.
@Suite(.serialized) struct MigrationResourceFailureTests {
    func migrate(sourceFaults: ResourceFaults? = nil, destinationFaults: ResourceFaults? = nil,
                 config: MigrationConfiguration = migrationConfig(connections: 2, timeout: .seconds(3)))
        throws -> (source: MigrationReport, destination: MigrationReport, src: SimulatedDevice, dst: SimulatedDevice) {
        let src = try SimulatedDevice(size: 8 << 20, dirtyRate: 4 << 20, seed: 11)
        let dst = try SimulatedDevice(destinationSize: 8 << 20)
        let destination = try MigrationDestination(listen: Endpoint(host: "127.0.0.1", port: 0), devices: [dst],
                                                   options: config.transfer, warn: { _ in })
        nonisolated(unsafe) var d: MigrationReport?
        let t = try OSThread(name: "ds-test-dest") {
            let run = { destination.run(acceptTimeout: .seconds(5)) }
            d = destinationFaults.map { $0.run(run) } ?? run()
        }
        let migrate = { MigrationSource(devices: [src], configuration: config, warn: { _ in }).migrate(to: destination.listener.endpoint) }
        let s = sourceFaults.map { $0.run(migrate) } ?? migrate()
        t.join()
        return (s, d!, src, dst)
    }

    /// The feedback reader (the thread after the two channels') cannot start: the devices,
    /// already in PRE_COPY, go back to RUNNING.
    @Test func sourceThreadStartFailure() throws {
        let (s, d, src, dst) = try migrate(sourceFaults: ResourceFaults(.thread, after: 2))
        defer { src.close(); dst.close() }
        #expect(!s.completed && !d.completed)
        #expect(s.error?.code == .localIO)
        #expect(s.error?.message.contains("ds-feedback") == true, "\(s.error?.message ?? "")")
        #expect(src.state == .running)
        #expect(dst.state != .running)
    }

    @Test func destinationBufferAllocationFailure() throws {
        let (s, d, src, dst) = try migrate(destinationFaults: ResourceFaults(.memory))
        defer { src.close(); dst.close() }
        #expect(!s.completed && !d.completed)
        #expect(d.error?.code == .localIO)
        #expect(d.error?.message.contains("cannot allocate the I/O buffers") == true, "\(d.error?.message ?? "")")
        #expect(s.error?.message.contains("cannot allocate") == true, "the source hears why: \(s.error?.message ?? "")")
        #expect(src.state == .running)
        #expect(dst.state != .running)
    }

    /// A VMM on a host whose seccomp filter forbids io_uring forces the blocking backend per
    /// session, with no environment variable.
    @Test func forcedBlockingBackendMigrates() throws {
        #expect(getenv("DEVSTREAM_IO_BACKEND") == nil)
        var config = migrationConfig(connections: 2)
        config.transfer.backend = .blocking
        let (s, d, src, dst) = try migrate(config: config)
        defer { src.close(); dst.close() }
        #expect(s.completed && d.completed, "\(s.error?.message ?? "") \(d.error?.message ?? "")")
        #expect(try src.digest() == dst.digest())
    }

    /// A simulated device whose workload thread cannot start is an error, not a trap.
    @Test func deviceWorkloadThreadFailure() {
        #expect(throws: DeviceError.self) {
            try ResourceFaults(.thread).run { () throws(DeviceError) in
                _ = try SimulatedDevice(size: 1 << 20, dirtyRate: 1 << 20, seed: 1)
            }
        }
    }
}

import Testing
import Glibc
import Synchronization
import DSTestSupport
@testable import DeviceStream
import DSSimulation
import DSSupport
import DSTransport
import DSDevices

/// A simulated device whose digest takes `delay`: a source that digests a huge device after the
/// handover, so its summary comes late.
final class SlowDigestDevice: AddressableDevice, @unchecked Sendable {
    // @unchecked: `inner` is thread-safe as a device; `digested` is an atomic.
    let inner: SimulatedDevice
    let delay: Duration
    let digested = Atomic<Bool>(false)
    init(_ inner: SimulatedDevice, delay: Duration) { self.inner = inner; self.delay = delay }

    var spec: String { inner.spec }
    var dataKind: DeviceDataKind { inner.dataKind }
    var migrationFlags: VFIOMigrationFlags { inner.migrationFlags }
    var state: VFIODeviceState { inner.state }
    func setState(_ target: VFIODeviceState) throws(DeviceError) { try inner.setState(target) }
    func precopyInfo() throws(DeviceError) -> PrecopyInfo { try inner.precopyInfo() }
    func stopCopySize() throws(DeviceError) -> UInt64 { try inner.stopCopySize() }
    func saveConfig() throws(DeviceError) -> [UInt8] { try inner.saveConfig() }
    func loadConfig(_ bytes: [UInt8]) throws(DeviceError) { try inner.loadConfig(bytes) }
    func digest() throws(DeviceError) -> UInt64 {
        usleep(UInt32(delay.milliseconds * 1000))
        defer { digested.store(true, ordering: .releasing) }
        return try inner.digest()
    }
    func close() { inner.close() }
    var size: UInt64 { inner.size }
    var trackingChunkSize: Int { inner.trackingChunkSize }
    func dataFD(for access: DeviceAccess) throws(DeviceError) -> Int32 { try inner.dataFD(for: access) }
    func takeDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) { try inner.takeDirtyChunks(into: &chunks) }
    func peekDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) { try inner.peekDirtyChunks(into: &chunks) }
    func dirtyByteCount() -> UInt64 { inner.dirtyByteCount() }
}

@Suite(.serialized) struct PhaseDeadlineTests {
    /// The source's summary comes later than the stall timeout (its digest is slow): the
    /// destination does not wait for it past the timeout — it completes (the devices run, every
    /// chunk verified) and its warning says what it knows and what it could not compare.
    @Test func theDestinationDoesNotWaitPastTheTimeoutForTheSummary() throws {
        let src = SlowDigestDevice(try SimulatedDevice(size: 4 << 20, dirtyRate: 0, seed: 8), delay: .seconds(6))
        let dst = try SimulatedDevice(destinationSize: 4 << 20)
        defer { src.close(); dst.close() }
        var config = migrationConfig(connections: 1, policy: .switchover, timeout: .seconds(2))
        config.scheduler.downtimeLimit = .seconds(1)
        let warnings = Mutex<[String]>([])
        let destination = try MigrationDestination(listen: Endpoint(host: "127.0.0.1", port: 0), devices: [dst], options: config.transfer,
                                                   warn: { w in warnings.withLock { $0.append(w) } })
        let d = Mutex<(MigrationReport, Bool)?>(nil)
        let t = try OSThread(name: "ds-test") {
            let r = destination.run(acceptTimeout: .seconds(10))
            d.withLock { $0 = (r, src.digested.load(ordering: .acquiring)) }
        }
        let s = MigrationSource(devices: [src], configuration: config, warn: { _ in }).migrate(to: destination.endpoint)
        t.join()
        let (report, digestedBefore) = try #require(d.withLock { $0 })
        #expect(!digestedBefore, "the destination waited for the source's slow digest (its summary)")
        #expect(report.completed, "\(report.error?.message ?? "")")
        #expect(dst.state == .running)
        let all = warnings.withLock { $0.joined(separator: "\n") }
        #expect(all.contains("the source's summary did not arrive within 2.0 seconds") && all.contains("the source's commit arrived")
                && all.contains("every device runs here"), "\(all)")
        #expect(s.completed, "\(s.error?.message ?? "")")
        #expect(try dst.digest() == src.inner.digest())
    }
}

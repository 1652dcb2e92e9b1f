import Foundation
import Glibc
import Synchronization
import Testing
@testable import DSSimulation
import DSDevices
import DSTestSupport

/// A clock the test moves by hand: the workload's writes are a function of it, so the checks
/// below hold on a loaded machine (the test only waits for the writer thread to catch up).
final class ManualClock: Sendable {
    private let ns = Atomic<Int64>(0)
    var now: Duration { .nanoseconds(ns.load(ordering: .acquiring)) }
    func advance(_ d: Duration) { _ = ns.add(Int64(d.components.seconds) * 1_000_000_000 + d.components.attoseconds / 1_000_000_000, ordering: .releasing) }
    var function: @Sendable () -> Duration { { [self] in now } }
}

/// Zeroed, page-aligned memory for a bare `DirtyingWorkload`, with one dirty bit per page; freed
/// with the object (keep it alive until the workload has stopped).
final class WorkloadMemory {
    let size: Int
    let base: UnsafeMutableRawPointer
    let bitmap: AtomicBitmap
    init(size: Int) {
        self.size = size
        base = .allocate(byteCount: size, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        bitmap = AtomicBitmap(bitCount: size / 4096)
    }
    deinit { base.deallocate() }
}

/// Waits (up to 60 s of real time, for a loaded machine) until `value()` reaches `target`, then a
/// little longer to see that it does not go past it.
private func settle(_ value: () -> UInt64, at target: UInt64) -> UInt64 {
    for _ in 0 ..< 6000 where value() < target { sleepMs(10) }
    sleepMs(30)
    return value()
}

@Suite struct DirtyRateTests {
    // MARK: The schedule's arithmetic

    @Test func scheduleIsExactAfterAnySteps() {
        let rate: UInt64 = 100 << 20  // 25600 pages per second
        var even = DirtySchedule(rate: rate), ragged = DirtySchedule(rate: rate)
        even.start(at: .zero); ragged.start(at: .zero)
        var evenTotal: UInt64 = 0, raggedTotal: UInt64 = 0
        for ms in 1 ... 1000 { evenTotal += even.take(at: .milliseconds(ms)) }
        // Ragged steps: sub-millisecond ticks, then a 700 ms stall (the writer held off the CPU).
        var t = Duration.zero
        for _ in 0 ..< 1000 { t += .microseconds(37); raggedTotal += ragged.take(at: t) }
        raggedTotal += ragged.take(at: .milliseconds(300) + .microseconds(1))
        raggedTotal += ragged.take(at: .milliseconds(1000))  // the stall: nothing forgiven
        #expect(evenTotal == 25600)
        #expect(raggedTotal == 25600)
        #expect(ragged.take(at: .milliseconds(1000)) == 0, "nothing is due twice")
        #expect(ragged.take(at: .milliseconds(999)) == 0, "a clock read out of order hands out nothing")
    }

    @Test func scheduleFloorsWithoutDrift() {
        // 10 000 B/s is 2.44 pages a second: floor of the running total, never of each step.
        var s = DirtySchedule(rate: 10_000)
        s.start(at: .zero)
        var total: UInt64 = 0
        for ms in stride(from: 10, through: 1000, by: 10) { total += s.take(at: .milliseconds(ms)) }
        #expect(total == 2)  // 10 000 / 4096
        for ms in stride(from: 1010, through: 2000, by: 10) { total += s.take(at: .milliseconds(ms)) }
        #expect(total == 4)  // 20 000 / 4096 = 4.88
        #expect(s.pagesDue(running: .seconds(4096)) == 10_000)
    }

    @Test func scheduleCountsRunningTimeOnly() {
        var s = DirtySchedule(rate: 4096 * 1000)  // 1000 pages per second
        s.start(at: .seconds(5))
        #expect(s.take(at: .seconds(5) + .milliseconds(400)) == 400)
        s.stop(at: .seconds(5) + .milliseconds(500))  // 100 pages due, not yet taken
        #expect(s.running == .milliseconds(500))
        s.start(at: .seconds(60))                     // 54.5 s paused: no writes owed for them
        #expect(s.take(at: .seconds(60)) == 100)
        #expect(s.take(at: .seconds(60) + .milliseconds(500)) == 500)
        #expect(s.pagesTaken == 1000)
        #expect(s.running == .seconds(1))
    }

    @Test func scheduleDoesNotOverflow() {
        let s = DirtySchedule(rate: 1 << 40)  // 1 TiB/s for an hour
        #expect(s.pagesDue(running: .seconds(3600)) == (1 << 40) / 4096 * 3600)
        #expect(DirtySchedule(rate: 0).pagesDue(running: .seconds(100)) == 0)
        #expect(s.pagesDue(running: .zero) == 0)
    }

    // MARK: The workload thread, driven by a manual clock

    @Test func workloadWritesItsRateByItsClock() throws {
        let memory = WorkloadMemory(size: 4 << 20)
        let clock = ManualClock()
        let rate: UInt64 = 64 << 20  // 16384 pages per second
        let w = try DirtyingWorkload(base: memory.base, size: UInt64(memory.size), rate: rate, hotFraction: 1, seed: 9,
                                     bitmap: memory.bitmap, chunkShift: 12, clock: clock.function)
        defer { w.stop() }
        let written = { w.pagesWritten.load(ordering: .relaxed) }
        w.resume()
        sleepMs(20)
        #expect(written() == 0, "the clock has not moved: nothing is due")
        clock.advance(.milliseconds(250))
        #expect(settle(written, at: 4096) == 4096)
        // Many small steps, then one long jump: the total follows the clock, not the steps.
        for _ in 0 ..< 50 { clock.advance(.microseconds(300)); sleepMs(1) }
        clock.advance(.milliseconds(735))
        #expect(settle(written, at: 16384) == 16384)
        w.pause()
        let p = w.progress
        #expect(p.running == .seconds(1))
        #expect(p.pages == 16384)
        // Paused time owes nothing.
        clock.advance(.seconds(5))
        w.resume()
        sleepMs(20)
        #expect(written() == 16384)
        clock.advance(.milliseconds(500))
        #expect(settle(written, at: 24576) == 24576)
        // Bytes of pages written over running time: within a page of the rate.
        let bytes = Double(written() * 4096), running = w.progress.running.seconds
        #expect(abs(bytes - Double(rate) * running) <= 4096)
    }

    // MARK: A `sim:` device made from its spec

    /// `sim:size=8M,dirty-rate=32M,hot=100%` over 1.5 s of its own running time: the bytes of
    /// pages written are rate × running time (to the page, far inside the 5% the rate promises),
    /// the tracked dirty pages are exactly the pages whose bytes changed, and scattered writes
    /// hit as many distinct pages as uniform draws should (rewrites counted in the rate, not in
    /// the dirty set).
    @Test func simSpecDirtiesAtItsRate() throws {
        let clock = ManualClock()
        let spec = try DeviceSpec("sim:size=8M,dirty-rate=32M,hot=100%,seed=11")
        let dev = try #require(try spec.makeSource(workloadClock: clock.function) as? SimulatedDevice)
        defer { dev.close() }
        try dev.setState(.preCopy)
        var initial: [UInt64] = []
        try dev.takeDirtyChunks(into: &initial)
        #expect(initial.count == 2048)
        let rate: UInt64 = 32 << 20
        let pages = { (dev.workloadProgress?.bytes ?? 0) / 4096 }
        for _ in 0 ..< 15 { clock.advance(.milliseconds(100)); sleepMs(2) }
        let expectedPages = rate * 3 / 2 / 4096  // 12288
        #expect(settle({ dev.pagesWritten }, at: expectedPages) == expectedPages)
        try dev.setState(.stopCopy)  // the workload is quiesced: no write after this returns
        let progress = try #require(dev.workloadProgress)
        #expect(progress.running == .milliseconds(1500))
        #expect(pages() == expectedPages)
        let achieved = Double(progress.bytes) / progress.running.seconds
        #expect(abs(achieved - Double(rate)) <= 0.05 * Double(rate))
        #expect(abs(Double(progress.bytes) - Double(rate) * 1.5) <= 4096)

        var dirty: [UInt64] = []
        try dev.takeDirtyChunks(into: &dirty)
        // The pages whose bytes differ from the original content are exactly the dirty ones.
        let fd = try dev.dataFD(for: .save)
        let original = ContentGenerator.bytes(count: 8 << 20, profile: .mixed, seed: 11, offset: 0)
        var page = [UInt8](repeating: 0, count: 4096)
        var changed: [UInt64] = []
        for p in 0 ..< UInt64(2048) {
            let n = page.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4096, off_t(p * 4096)) }
            #expect(n == 4096)
            if page[...] != original[Int(p * 4096) ..< Int(p * 4096 + 4096)] { changed.append(p) }
        }
        #expect(changed == dirty.sorted())
        // 12288 uniform draws over 2048 pages: 2048 × (1 − e^−6) ≈ 2043 distinct expected.
        let expectedDistinct = 2048 * (1 - exp(-6.0))
        #expect(abs(Double(dirty.count) - expectedDistinct) <= 0.01 * expectedDistinct)
        #expect(UInt64(dirty.count) <= expectedPages)
    }

    /// Hot-set dirtying (hot=10%): about 90% of the page writes land in the hot region, so the
    /// distinct dirty pages stay far below the writes, while the rate counts every write.
    @Test func hotSetRewritesCountTowardTheRate() throws {
        let clock = ManualClock()
        let dev = try SimulatedDevice(size: 16 << 20, dirtyRate: 16 << 20, hotFraction: 0.1, seed: 4, chunkSize: 4096,
                                      workloadClock: clock.function)
        defer { dev.close() }
        try dev.setState(.preCopy)
        var initial: [UInt64] = []
        try dev.takeDirtyChunks(into: &initial)
        clock.advance(.seconds(1))
        #expect(settle({ dev.pagesWritten }, at: 4096) == 4096)
        try dev.setState(.stopCopy)
        #expect(dev.workloadProgress?.bytes == 16 << 20)
        var dirty: [UInt64] = []
        try dev.takeDirtyChunks(into: &dirty)
        // Hot region: 410 pages take ~3686 writes (all of them hit); the other ~410 writes land
        // uniformly, mostly outside it: ~780 distinct pages, not 4096.
        #expect(dirty.count > 600 && dirty.count < 900, "\(dirty.count) distinct dirty pages")
    }
}

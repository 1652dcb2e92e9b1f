/// The fixtures' shared pieces: an atomic per-chunk dirty bitmap, and the background workload
/// thread that dirties a simulated device's memory at a set rate.

import Synchronization
import DSDevices
import DSSupport

/// A fixed-size bitmap of atomic 64-bit words. Setters use release ordering, takers exchange a whole
/// word with acquire-release ordering, so a bit set after a take is seen by a later take.
package final class AtomicBitmap: @unchecked Sendable {
    // Invariant: `words` is allocated and initialised for the object's whole life and only
    // accessed through atomic operations.
    package let bitCount: Int
    package let wordCount: Int
    private let words: UnsafeMutablePointer<Atomic<UInt64>>

    package init(bitCount: Int) {
        self.bitCount = bitCount
        wordCount = (bitCount + 63) / 64
        words = .allocate(capacity: max(wordCount, 1))
        for i in 0 ..< max(wordCount, 1) { (words + i).initialize(to: Atomic(0)) }
    }

    deinit {
        words.deinitialize(count: max(wordCount, 1))
        words.deallocate()
    }

    package func set(_ bit: Int) {
        _ = words[bit >> 6].bitwiseOr(1 << UInt64(bit & 63), ordering: .releasing)
    }

    package func isSet(_ bit: Int) -> Bool {
        words[bit >> 6].load(ordering: .acquiring) & (1 << UInt64(bit & 63)) != 0
    }

    package func clearAll() {
        for i in 0 ..< wordCount { words[i].store(0, ordering: .releasing) }
    }

    /// Takes (returns and clears) word `i`.
    package func takeWord(_ i: Int) -> UInt64 {
        if words[i].load(ordering: .relaxed) == 0 { return 0 }
        return words[i].exchange(0, ordering: .acquiringAndReleasing)
    }

    /// Appends the set bits' indices to `out`, clearing them word by word.
    package func take(into out: inout [UInt64]) {
        for i in 0 ..< wordCount {
            var w = takeWord(i)
            while w != 0 {
                let b = w.trailingZeroBitCount
                out.append(UInt64(i * 64 + b))
                w &= w - 1
            }
        }
    }

    /// Appends the set bits' indices to `out` without clearing them.
    package func peek(into out: inout [UInt64]) {
        for i in 0 ..< wordCount {
            var w = words[i].load(ordering: .relaxed)
            while w != 0 {
                let b = w.trailingZeroBitCount
                out.append(UInt64(i * 64 + b))
                w &= w - 1
            }
        }
    }

    package var popcount: Int {
        var n = 0
        for i in 0 ..< wordCount { n += words[i].load(ordering: .relaxed).nonzeroBitCount }
        return n
    }
}

/// The dirtier's schedule: how many 4 KiB page writes are due after a given running time.
///
/// `dirty-rate` means *bytes of pages written per second of running time*: every page write
/// counts 4 KiB, whether or not the page was already dirty (a workload that rewrites its hot set
/// still writes at its rate; tracking reports the distinct pages, which is at most that). The
/// schedule is a pure function of the running time, `floor(rate × running / 4 KiB)` pages in all,
/// computed in integers (no drift from rounding), with nothing forgiven: a writer that was held
/// off the CPU for a while writes what fell due as soon as it runs again. (An earlier version
/// capped the debt at 50 ms of writes and so fell short of its rate on a loaded machine.) Running
/// time accrues only while the device runs (`start`/`stop` of a stretch); so a `take` at running
/// time `t` brings the pages handed out to `floor(rate × t / 4 KiB)`, within one page of
/// `rate × t`, whatever the clock's steps. (When the device stops, what fell due since the
/// writer's last tick is handed out after it runs again.)
package struct DirtySchedule: Sendable, Equatable {
    package static let pageSize: UInt64 = 4096
    /// Bytes of pages per second of running time.
    package let rate: UInt64
    /// Running time of the stretches that have ended.
    package private(set) var banked: Duration = .zero
    /// When the current stretch started (nil between stretches).
    package private(set) var stretchStart: Duration?
    /// Pages handed out by `take` so far.
    package private(set) var pagesTaken: UInt64 = 0
    /// Running time up to the last `take` (or `stop`).
    package private(set) var running: Duration = .zero

    package init(rate: UInt64) { self.rate = rate }

    /// A running stretch starts at `now` (the device entered a running state).
    package mutating func start(at now: Duration) {
        if stretchStart == nil { stretchStart = now }
    }

    /// The stretch ends at `now`; its running time is banked. Pages due by `now` and not yet
    /// taken stay due: the next `take` hands them out.
    package mutating func stop(at now: Duration) {
        guard let s = stretchStart else { return }
        banked += max(now - s, .zero)
        running = banked
        stretchStart = nil
    }

    /// Pages due by `floor(rate × running / 4 KiB)` for a running time `running`.
    package func pagesDue(running: Duration) -> UInt64 {
        guard running > .zero else { return 0 }
        let (sec, atto) = running.components
        let ns = UInt64(sec) &* 1_000_000_000 &+ UInt64(atto / 1_000_000_000)
        // rate × ns / (4096 × 10⁹), in 128 bits: no overflow for any rate and any run shorter
        // than centuries.
        let product = rate.multipliedFullWidth(by: ns)
        let divisor = Self.pageSize * 1_000_000_000
        guard product.high < divisor else { return .max }
        return divisor.dividingFullWidth(product).quotient
    }

    /// The page writes that fell due between the last call and `now`; the caller writes them.
    package mutating func take(at now: Duration) -> UInt64 {
        var t = banked
        if let s = stretchStart { t += max(now - s, .zero) }
        running = max(running, t)
        let due = pagesDue(running: running)
        let n = due > pagesTaken ? due - pagesTaken : 0
        pagesTaken += n
        return n
    }
}

/// A background thread that dirties device memory at `rate` bytes per second while resumed.
///
/// It works in ticks of about 1 ms: each tick writes the 4 KiB pages its `DirtySchedule` says
/// fell due since the last tick, by the workload's clock (CLOCK_MONOTONIC, or one a test drives),
/// 64 random bytes at a random 64-byte slot of each page (the whole page counts toward the rate),
/// with ~90% of the pages in a contiguous hot region of `hotFraction` of the memory, and sets the
/// page's bit in `bitmap` (bit = page offset >> `chunkShift`) after writing it. With
/// `hotFraction` 1 every page is drawn uniformly from the whole memory (scattered dirtying).
/// `pagesWritten` and `progress` let a caller check the rate against the workload's own clock.
package final class DirtyingWorkload: DeviceActivity, @unchecked Sendable {
    // Invariant: `cond` guards active/shutdown/idle/exited and `schedule`. The thread writes
    // memory only while `idle` is false, and sets `idle` to false only while `active` is true
    // (`waitForTurn`, after every sleep), so once `pause()` has seen `idle == true` no write can
    // happen until the next `resume()`.
    // `thread` is set by `init` and cleared by `stop`, which only the owning device calls, once.
    private let base: UnsafeMutableRawPointer
    private let pages: UInt64
    private let hotStart: UInt64
    private let hotPages: UInt64
    private let bitmap: AtomicBitmap
    private let chunkShift: Int
    private let seed: UInt64
    private let clock: @Sendable () -> Duration
    private let cond = ConditionLock()
    private var active = false
    private var shutdown = false
    private var idle = true
    private var exited = false
    private var schedule: DirtySchedule
    private var thread: OSThread?
    /// Pages written so far (a "generation" the devices put in their config).
    package let pagesWritten = Atomic<UInt64>(0)

    /// Starts the writing thread, `ds-workload`, paused.
    /// - Throws: `.io` when the thread cannot be started.
    /// `clock` is the workload's time (CLOCK_MONOTONIC by default; tests drive their own).
    package init(base: UnsafeMutableRawPointer, size: UInt64, rate: UInt64, hotFraction: Double, seed: UInt64,
                 bitmap: AtomicBitmap, chunkShift: Int,
                 clock: @escaping @Sendable () -> Duration = { Monotonic.now }) throws(DeviceError) {
        self.base = base
        self.clock = clock
        schedule = DirtySchedule(rate: rate)
        pages = size / 4096
        let hot = UInt64((Double(pages) * min(max(hotFraction, 0), 1)).rounded())
        hotPages = hot
        hotStart = hot > 0 && pages > hot ? ContentGenerator.mix(seed ^ 0x407) % (pages - hot) : 0
        self.bitmap = bitmap
        self.chunkShift = chunkShift
        self.seed = seed
        do { thread = try OSThread(name: "ds-workload") { [self] in self.run() } } catch {
            throw DeviceError(.io, "cannot start the workload thread that dirties the simulated device: pthread_create failed: \(error); the process is out of threads or memory")
        }
    }

    /// Lets the thread write.
    /// Running time counts from this call (not from when the thread wakes up).
    package func resume() {
        cond.withLock {
            schedule.start(at: clock())
            active = true
            cond.broadcast()
        }
    }

    /// Stops writing; returns once no write is in progress and none can start.
    /// Running time stops at this call; pages that fell due before it are written after the next
    /// `resume()`.
    package func pause() {
        cond.withLock {
            schedule.stop(at: clock())
            active = false
            _ = cond.wait(until: { idle }, timeout: nil)
        }
    }

    /// Ends the thread and waits for it.
    package func stop() {
        cond.withLock {
            schedule.stop(at: clock())
            shutdown = true
            active = false
            cond.broadcast()
            _ = cond.wait(until: { exited }, timeout: nil)
        }
        thread?.join()
        thread = nil  // the thread's closure holds `self`: let both go
    }

    /// Waits (the lock held) until the thread may write; false at shutdown.
    private func waitForTurn() -> Bool {
        cond.withLock {
            while !active && !shutdown {
                idle = true
                cond.broadcast()
                _ = cond.wait(until: { active || shutdown }, timeout: nil)
            }
            if shutdown {
                idle = true
                exited = true
                cond.broadcast()
                return false
            }
            idle = false
            return true
        }
    }

    /// Running time so far and the pages the schedule has handed out for it (all written once
    /// the current tick ends; after `pause()` returns, exactly written).
    package var progress: (running: Duration, pages: UInt64) {
        cond.withLock { (schedule.running, schedule.pagesTaken) }
    }

    private func run() {
        var rng = ContentGenerator.mix(seed ^ 0xD1127) | 1
        while true {
            // The tick's sleep counts as idle, so `pause()` (a device stopping: the start of the
            // downtime) waits at most for a burst of writes in progress, never for this thread
            // to be scheduled again after its sleep, which takes milliseconds on a busy machine.
            cond.withLock {
                idle = true
                cond.broadcast()
                _ = cond.wait(until: { shutdown }, timeout: .milliseconds(1))
            }
            guard waitForTurn() else { return }
            let n = cond.withLock { schedule.take(at: clock()) }
            if pages > 0 && n > 0 {
                for _ in 0 ..< n { writePage(&rng) }
                _ = pagesWritten.add(n, ordering: .relaxed)
            }
        }
    }

    @inline(__always) private func next(_ s: inout UInt64) -> UInt64 {
        // xorshift64*
        s ^= s >> 12
        s ^= s << 25
        s ^= s >> 27
        return s &* 0x2545_F491_4F6C_DD1D
    }

    private func writePage(_ rng: inout UInt64) {
        let r = next(&rng)
        let page: UInt64
        if hotPages > 0 && r % 100 < 90 {
            page = hotStart + (r >> 8) % hotPages
        } else {
            page = (r >> 8) % pages
        }
        let offset = Int(page * 4096) + Int((r >> 56) & 63) * 64
        for i in 0 ..< 8 {
            base.storeBytes(of: next(&rng), toByteOffset: offset + i * 8, as: UInt64.self)
        }
        bitmap.set(Int((page * 4096) >> UInt64(chunkShift)))
    }
}

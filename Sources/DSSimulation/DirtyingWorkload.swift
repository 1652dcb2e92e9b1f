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

/// A background thread that dirties device memory at `rate` bytes per second while resumed.
///
/// It works in ticks of about 1 ms: each tick writes `rate * elapsed` bytes' worth of 4 KiB pages
/// (64 random bytes at a random 64-byte slot of each page; the whole page counts toward the rate),
/// with ~90% of the pages in a contiguous hot region of `hotFraction` of the memory, and sets the
/// page's bit in `bitmap` (bit = page offset >> `chunkShift`) after writing it.
package final class DirtyingWorkload: DeviceActivity, @unchecked Sendable {
    // Invariant: `cond` guards active/shutdown/idle/exited. The thread writes memory only while
    // `idle` is false, and sets `idle` to false only while `active` is true, so once `pause()`
    // has seen `idle == true` no write can happen until the next `resume()`. `thread` is set by
    // `init` and cleared by `stop`, which only the owning device calls, once.
    private let base: UnsafeMutableRawPointer
    private let pages: UInt64
    private let rate: UInt64
    private let hotStart: UInt64
    private let hotPages: UInt64
    private let bitmap: AtomicBitmap
    private let chunkShift: Int
    private let seed: UInt64
    private let cond = ConditionLock()
    private var active = false
    private var shutdown = false
    private var idle = true
    private var exited = false
    private var thread: OSThread?
    /// Pages written so far (a "generation" the devices put in their config).
    package let pagesWritten = Atomic<UInt64>(0)

    /// Starts the writing thread, `ds-workload`, paused.
    /// - Throws: `.io` when the thread cannot be started.
    package init(base: UnsafeMutableRawPointer, size: UInt64, rate: UInt64, hotFraction: Double, seed: UInt64,
                 bitmap: AtomicBitmap, chunkShift: Int) throws(DeviceError) {
        self.base = base
        pages = size / 4096
        self.rate = rate
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
    package func resume() {
        cond.withLock {
            active = true
            cond.broadcast()
        }
    }

    /// Stops writing; returns once no write is in progress and none can start.
    package func pause() {
        cond.withLock {
            active = false
            _ = cond.wait(until: { idle }, timeout: nil)
        }
    }

    /// Ends the thread and waits for it.
    package func stop() {
        cond.withLock {
            shutdown = true
            active = false
            cond.broadcast()
            _ = cond.wait(until: { exited }, timeout: nil)
        }
        thread?.join()
        thread = nil  // the thread's closure holds `self`: let both go
    }

    /// Waits (the lock held) until the thread may write; false at shutdown.
    private func waitForTurn(restarted: inout Bool) -> Bool {
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
            restarted = idle
            idle = false
            return true
        }
    }

    private func run() {
        var rng = ContentGenerator.mix(seed ^ 0xD1127) | 1
        var owed = 0.0
        var last = Monotonic.now
        let cap = Double(rate) * 0.05 + 4096
        var restarted = false
        while waitForTurn(restarted: &restarted) {
            if restarted { last = Monotonic.now; owed = 0 }
            sleep(for: .milliseconds(1))
            let t = Monotonic.now
            owed = min(owed + Double(rate) * (t - last).seconds, cap)
            last = t
            let n = Int(owed / 4096)
            owed -= Double(n) * 4096
            if pages > 0 {
                for _ in 0 ..< n { writePage(&rng) }
                _ = pagesWritten.add(UInt64(n), ordering: .relaxed)
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

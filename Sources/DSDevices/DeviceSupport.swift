/// Pieces shared by the built-in devices: VFIO state names for messages, an atomic per-chunk dirty
/// bitmap, the background workload thread that dirties a device's memory at a set rate, and XXH3
/// helpers.

import CXXHash
import Foundation
import Synchronization
import DSSupport

/// The UAPI name of a state (`PRE_COPY`), for messages.
func vfioName(_ s: VFIODeviceState) -> String {
    switch s {
    case .error: return "ERROR"
    case .stop: return "STOP"
    case .running: return "RUNNING"
    case .stopCopy: return "STOP_COPY"
    case .resuming: return "RESUMING"
    case .runningP2P: return "RUNNING_P2P"
    case .preCopy: return "PRE_COPY"
    case .preCopyP2P: return "PRE_COPY_P2P"
    }
}

/// The error a device throws when `VFIOStateMachine` has no path between two states.
/// Walks the kernel's state machine from `current` to `target` one arc at a time, as a driver
/// sees it: `arc(from, next)` runs for each arc in order and must make `next` the device's
/// state. Throws `.blockedTransition` (naming `device`) when there is no path.
func walkArcs(from current: VFIODeviceState, to target: VFIODeviceState, flags: VFIOMigrationFlags, device: String,
              _ arc: (VFIODeviceState, VFIODeviceState) throws(DeviceError) -> Void) throws(DeviceError) {
    guard let path = VFIOStateMachine.path(from: current, to: target, flags: flags) else {
        throw blockedTransition(device, from: current, to: target, flags: flags)
    }
    var from = current
    for next in path {
        try arc(from, next)
        from = next
    }
}

func blockedTransition(_ device: String, from: VFIODeviceState, to: VFIODeviceState, flags: VFIOMigrationFlags) -> DeviceError {
    var names: [String] = []
    if flags.contains(.stopCopy) { names.append("STOP_COPY") }
    if flags.contains(.p2p) { names.append("P2P") }
    if flags.contains(.preCopy) { names.append("PRE_COPY") }
    return DeviceError(.blockedTransition,
                       "\(device): the VFIO state machine does not allow \(vfioName(from)) -> \(vfioName(to)) "
                       + "for a device with migration flags [\(names.joined(separator: ", "))]; "
                       + "move the device through an allowed path (e.g. RESUMING -> STOP -> RUNNING)")
}

/// `.invalidState` for a data-plane access outside its states.
func accessError(_ device: String, _ access: DeviceAccess, _ state: VFIODeviceState, preCopy: Bool = true) -> DeviceError {
    switch access {
    case .save:
        let allowed = preCopy ? "PRE_COPY, PRE_COPY_P2P and STOP_COPY" : "STOP_COPY"
        return DeviceError(.invalidState,
                           "\(device): cannot read migration data in state \(vfioName(state)); reading is allowed in \(allowed)")
    case .load:
        return DeviceError(.invalidState,
                           "\(device): cannot write migration data in state \(vfioName(state)); writing is allowed in RESUMING only")
    }
}

/// glibc's `memfd_create(2)` (the Glibc module hides it behind _GNU_SOURCE).
@_silgen_name("memfd_create")
func ds_memfd_create(_ name: UnsafePointer<CChar>, _ flags: UInt32) -> Int32

/// The `errno` text, for `.io` messages (one wording for the whole project: `Errno`).
func errnoText(_ e: Int32 = errno) -> String { Errno(rawValue: e).description }

/// XXH3-64 of a memory range.
func xxh3(_ p: UnsafeRawPointer?, _ count: Int) -> UInt64 {
    XXH3_64bits(p, count)
}

/// A streaming XXH3-64 hasher (owns an `XXH3_state_t`).
final class XXH3Stream {
    private let state = XXH3_createState()
    init() { reset() }
    deinit { XXH3_freeState(state) }
    func reset() { _ = XXH3_64bits_reset(state) }
    func update(_ p: UnsafeRawPointer?, _ count: Int) { _ = XXH3_64bits_update(state, p, count) }
    func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0.baseAddress, $0.count) } }
    var digest: UInt64 { XXH3_64bits_digest(state) }
}

/// A fixed-size bitmap of atomic 64-bit words. Setters use release ordering, takers exchange a whole
/// word with acquire-release ordering, so a bit set after a take is seen by a later take.
final class AtomicBitmap: @unchecked Sendable {
    // Invariant: `words` is allocated and initialised for the object's whole life and only
    // accessed through atomic operations.
    let bitCount: Int
    let wordCount: Int
    private let words: UnsafeMutablePointer<Atomic<UInt64>>

    init(bitCount: Int) {
        self.bitCount = bitCount
        wordCount = (bitCount + 63) / 64
        words = .allocate(capacity: max(wordCount, 1))
        for i in 0 ..< max(wordCount, 1) { (words + i).initialize(to: Atomic(0)) }
    }

    deinit {
        words.deinitialize(count: max(wordCount, 1))
        words.deallocate()
    }

    func set(_ bit: Int) {
        _ = words[bit >> 6].bitwiseOr(1 << UInt64(bit & 63), ordering: .releasing)
    }

    func isSet(_ bit: Int) -> Bool {
        words[bit >> 6].load(ordering: .acquiring) & (1 << UInt64(bit & 63)) != 0
    }

    func clearAll() {
        for i in 0 ..< wordCount { words[i].store(0, ordering: .releasing) }
    }

    /// Takes (returns and clears) word `i`.
    func takeWord(_ i: Int) -> UInt64 {
        if words[i].load(ordering: .relaxed) == 0 { return 0 }
        return words[i].exchange(0, ordering: .acquiringAndReleasing)
    }

    /// Appends the set bits' indices to `out`, clearing them word by word.
    func take(into out: inout [UInt64]) {
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
    func peek(into out: inout [UInt64]) {
        for i in 0 ..< wordCount {
            var w = words[i].load(ordering: .relaxed)
            while w != 0 {
                let b = w.trailingZeroBitCount
                out.append(UInt64(i * 64 + b))
                w &= w - 1
            }
        }
    }

    var popcount: Int {
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
final class DirtyingWorkload: @unchecked Sendable {
    // Invariant: `cond` guards active/shutdown/idle/exited. The thread writes memory only while
    // `idle` is false, and sets `idle` to false only while `active` is true, so once `pause()`
    // has seen `idle == true` no write can happen until the next `resume()`.
    private let base: UnsafeMutableRawPointer
    private let pages: UInt64
    private let rate: UInt64
    private let hotStart: UInt64
    private let hotPages: UInt64
    private let bitmap: AtomicBitmap
    private let chunkShift: Int
    private let seed: UInt64
    private let cond = NSCondition()
    private var active = false
    private var shutdown = false
    private var idle = true
    private var exited = false
    /// Pages written so far (a "generation" the devices put in their config).
    let pagesWritten = Atomic<UInt64>(0)

    init(base: UnsafeMutableRawPointer, size: UInt64, rate: UInt64, hotFraction: Double, seed: UInt64,
         bitmap: AtomicBitmap, chunkShift: Int) {
        self.base = base
        pages = size / 4096
        self.rate = rate
        let hot = UInt64((Double(pages) * min(max(hotFraction, 0), 1)).rounded())
        hotPages = hot
        hotStart = hot > 0 && pages > hot ? ContentGenerator.mix(seed ^ 0x407) % (pages - hot) : 0
        self.bitmap = bitmap
        self.chunkShift = chunkShift
        self.seed = seed
        let thread = Thread { [self] in self.run() }
        thread.name = "ds-workload"
        thread.start()
    }

    /// Lets the thread write.
    func resume() {
        cond.lock()
        active = true
        cond.broadcast()
        cond.unlock()
    }

    /// Stops writing; returns once no write is in progress and none can start.
    func pause() {
        cond.lock()
        active = false
        while !idle { cond.wait() }
        cond.unlock()
    }

    /// Ends the thread and waits for it.
    func stop() {
        cond.lock()
        shutdown = true
        active = false
        cond.broadcast()
        while !exited { cond.wait() }
        cond.unlock()
    }

    private static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    private func run() {
        var rng = ContentGenerator.mix(seed ^ 0xD1127) | 1
        var owed = 0.0
        var last = Self.now()
        let cap = Double(rate) * 0.05 + 4096
        cond.lock()
        while true {
            while !active && !shutdown {
                idle = true
                cond.broadcast()
                cond.wait()
            }
            if shutdown { break }
            if idle { last = Self.now(); owed = 0 }
            idle = false
            cond.unlock()

            var ts = timespec(tv_sec: 0, tv_nsec: 1_000_000)
            nanosleep(&ts, nil)
            let t = Self.now()
            owed = min(owed + Double(rate) * (t - last), cap)
            last = t
            let n = Int(owed / 4096)
            owed -= Double(n) * 4096
            if pages > 0 {
                for _ in 0 ..< n { writePage(&rng) }
                _ = pagesWritten.add(UInt64(n), ordering: .relaxed)
            }
            cond.lock()
        }
        idle = true
        exited = true
        cond.broadcast()
        cond.unlock()
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

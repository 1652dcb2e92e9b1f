import DSDevices
import DSSupport

/// The state memory of a simulated device (`sim:`, `vfio-emu:`): `size` bytes filled with
/// seeded content, a dirty bitmap with one bit per tracking chunk, and the workload that dirties
/// the memory at a set rate while the device runs.
final class SimulatedMemory: @unchecked Sendable {
    // Invariant: `base` is valid from `init` until `release`, which the owning device calls once,
    // under its lock, after which its `DeviceCore` refuses every access. The workload writes the
    // memory only while resumed (the device's running states).
    let base: UnsafeMutableRawPointer
    let size: UInt64
    let bitmap: AtomicBitmap
    /// Nil without a dirty rate (and on a destination).
    let workload: DirtyingWorkload?
    private let free: () -> Void

    /// Takes `size` bytes at `base`, which `free` releases, with one dirty bit per `chunkSize`
    /// bytes (a power of two). With `content`, fills the memory with that profile's bytes for
    /// `seed`; with a `dirtyRate`, starts a workload, already resumed (a source starts RUNNING).
    /// - Throws: when the workload cannot start; the memory is released (`free`) first.
    init(base: UnsafeMutableRawPointer, size: UInt64, chunkSize: Int, content: ContentProfile?, seed: UInt64,
         dirtyRate: UInt64, hotFraction: Double, clock: @escaping @Sendable () -> Duration = { Monotonic.now },
         free: @escaping () -> Void) throws(DeviceError) {
        self.base = base
        self.size = size
        self.free = free
        bitmap = AtomicBitmap(bitCount: Int((size + UInt64(chunkSize) - 1) / UInt64(chunkSize)))
        if let content {
            ContentGenerator.fill(UnsafeMutableRawBufferPointer(start: base, count: Int(size)), profile: content, seed: seed, offset: 0)
        }
        if dirtyRate > 0 {
            do {
                workload = try DirtyingWorkload(base: base, size: size, rate: dirtyRate, hotFraction: hotFraction, seed: seed,
                                                bitmap: bitmap, chunkShift: chunkSize.trailingZeroBitCount, clock: clock)
            } catch {
                free()
                throw error
            }
            workload?.resume()
        } else {
            workload = nil
        }
    }

    /// Pages the workload has written so far: the "generation" the devices put in their config.
    var generation: UInt64 { workload?.pagesWritten.load(ordering: .relaxed) ?? 0 }

    /// XXH3-64 of the whole memory.
    var digest: UInt64 { xxh3(base, Int(size)) }

    /// Stops the workload and releases the memory.
    func release() {
        workload?.stop()
        free()
    }
}

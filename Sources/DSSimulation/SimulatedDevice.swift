/// `sim:`: a simulated device with addressable state, for benchmarks and tests.
///
/// Spec: `sim:size=1G,dirty-rate=64M,hot=10%,profile=mixed,seed=1[,chunk=1M]`.
///
/// The state lives in a memfd of `size` bytes, mapped shared, so the migration engine reads and
/// writes it through `dataFD` with `pread`/`pwrite` (or io_uring) while the device sees the same
/// pages through its mapping.
///
/// - A source (`init(size:...)`) starts in RUNNING, filled with `ContentGenerator` content of its
///   profile and seed; while it is in a running state (RUNNING, PRE_COPY and their P2P forms) a
///   `DirtyingWorkload` thread writes `dirty-rate` bytes per second of 4 KiB pages: bytes of pages
///   written (rewrites of a dirty page count again) per second of running time, as a pure function
///   of the workload's clock (`DirtySchedule`), so at each of its ~1 ms ticks the total is within
///   a page of rate × running time however the threads were scheduled (when the device stops,
///   short by at most what fell due since the last tick). The workload is paused and quiesced (no write after `setState` returns) when the device leaves the running
///   states and resumes when it enters one again.
/// - A destination (`init(destinationSize:)`) starts empty (zeros) in RESUMING, with no workload.
///
/// Dirty tracking is a per-chunk atomic bitmap (`trackingChunkSize`, default 1 MiB). Entering
/// PRE_COPY from a running state, or STOP_COPY without pre-copy, arms it: the next
/// `takeDirtyChunks` reports every chunk, later ones report the chunks written since their bits
/// were taken. A bit is cleared before the caller reads the chunk, so a write that lands after the
/// read is reported again.
///
/// The config blob is 64 bytes: magic `DSSIMCFG`, version, size, seed, the workload's generation
/// (pages written) and three registers derived from seed and generation. `digest()` covers the
/// image only, not the config (the config is compared separately).

import Glibc
import DSDevices
import DSSupport

/// glibc's `memfd_create(2)` (the Glibc module hides it behind _GNU_SOURCE).
@_silgen_name("memfd_create")
private func ds_memfd_create(_ name: UnsafePointer<CChar>, _ flags: UInt32) -> Int32

public final class SimulatedDevice: AddressableDevice, @unchecked Sendable {
    // Invariant: `core` guards the state and the tracking flags. The mapping (`fd`, `memory`) is
    // made by `init` and released by `close`, after which `core` refuses every access. The dirty
    // bitmap is atomic and is shared with the workload thread without the lock; the image memory
    // is written by the workload thread only while the device is in a running state (the
    // workload is quiesced under the lock before the state leaves them).
    public let spec: String
    public let size: UInt64
    public let trackingChunkSize: Int
    public let seed: UInt64
    public let profile: ContentProfile
    public let dirtyRate: UInt64
    public let hotFraction: Double
    /// True for a device made with `init(destinationSize:)`.
    public let isDestination: Bool
    public var dataKind: DeviceDataKind { .addressable(size: size) }
    public var migrationFlags: VFIOMigrationFlags { core.flags }

    static let config = ConfigBlob(magic: 0x4746_434D_4953_5344, version: 1, count: 64, kind: "sim device")  // "DSSIMCFG"

    /// What the lock guards besides the state.
    struct Tracking: Sendable {
        /// Dirty tracking runs (a saving state was entered).
        var armed = false
        /// The next take reports every chunk.
        var initialPending = false
    }

    private let core: DeviceCore<Tracking>
    private let fd: Int32
    private let memory: SimulatedMemory
    private var bitmap: AtomicBitmap { memory.bitmap }
    private let chunkCount: Int

    /// A source device: content of `profile`/`seed`, in RUNNING, dirtied at `dirtyRate` bytes/s.
    public convenience init(size: UInt64, dirtyRate: UInt64 = 0, hotFraction: Double = 0.1, profile: ContentProfile = .mixed,
                            seed: UInt64 = 1, chunkSize: Int = 4 << 10, spec: String? = nil) throws(DeviceError) {
        try self.init(size: size, dirtyRate: dirtyRate, hotFraction: hotFraction, profile: profile, seed: seed,
                      chunkSize: chunkSize, spec: spec, workloadClock: { Monotonic.now })
    }

    /// A source device whose workload keeps time by `workloadClock` (tests drive it to check the
    /// dirty rate without depending on the machine's timing).
    package init(size: UInt64, dirtyRate: UInt64 = 0, hotFraction: Double = 0.1, profile: ContentProfile = .mixed,
                 seed: UInt64 = 1, chunkSize: Int = 4 << 10, spec: String? = nil,
                 workloadClock: @escaping @Sendable () -> Duration) throws(DeviceError) {
        let text = spec ?? "sim:size=\(size),dirty-rate=\(dirtyRate),hot=\(hotFraction),profile=\(profile.rawValue),seed=\(seed),chunk=\(chunkSize)"
        let (fd, base) = try Self.makeMapping(size: size, chunkSize: chunkSize, spec: text)
        self.fd = fd
        memory = try SimulatedMemory(base: base, size: size, chunkSize: chunkSize, content: profile, seed: seed,
                                 dirtyRate: dirtyRate, hotFraction: hotFraction, clock: workloadClock) { Self.unmap(fd, base, size) }
        self.spec = text
        self.size = size
        trackingChunkSize = chunkSize
        self.seed = seed
        self.profile = profile
        self.dirtyRate = dirtyRate
        self.hotFraction = hotFraction
        isDestination = false
        core = DeviceCore(name: "sim device", flags: [.stopCopy, .preCopy], state: .running, inner: Tracking())
        chunkCount = memory.bitmap.bitCount
    }

    /// A destination device: `destinationSize` zero bytes, in RESUMING, no workload.
    public init(destinationSize: UInt64, chunkSize: Int = 4 << 10, spec: String? = nil) throws(DeviceError) {
        let text = spec ?? "sim:size=\(destinationSize)"
        // Memory is allocated now, as a real destination reserves device memory before it
        // resumes, not page by page inside the migration.
        let (fd, base) = try Self.makeMapping(size: destinationSize, chunkSize: chunkSize, spec: text)
        self.fd = fd
        memory = try SimulatedMemory(base: base, size: destinationSize, chunkSize: chunkSize, content: nil, seed: 0,
                                 dirtyRate: 0, hotFraction: 0) { Self.unmap(fd, base, destinationSize) }
        self.spec = text
        size = destinationSize
        trackingChunkSize = chunkSize
        seed = 0
        profile = .zero
        dirtyRate = 0
        hotFraction = 0
        isDestination = true
        core = DeviceCore(name: "sim device", flags: [.stopCopy, .preCopy], state: .resuming, inner: Tracking())
        chunkCount = memory.bitmap.bitCount
    }

    deinit { close() }

    /// A shared memfd mapping of `size` bytes, pre-faulted (MAP_POPULATE: much faster than
    /// faulting page by page while the content is generated).
    private static func makeMapping(size: UInt64, chunkSize: Int, spec: String) throws(DeviceError) -> (Int32, UnsafeMutableRawPointer) {
        guard size > 0, size % 4096 == 0 else {
            throw DeviceError(.badSpec, "sim device '\(spec)': size \(size) must be a positive multiple of 4K")
        }
        guard chunkSize >= 4096, chunkSize & (chunkSize - 1) == 0 else {
            throw DeviceError(.badSpec, "sim device '\(spec)': chunk \(chunkSize) must be a power of two of at least 4K")
        }
        let fd = ds_memfd_create("ds-sim", 0)
        guard fd >= 0 else {
            throw DeviceError(.io, "sim device '\(spec)': memfd_create failed: \(Errno.current); check that memfd is available")
        }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let e = Errno.current
            Glibc.close(fd)
            throw DeviceError(.io, "sim device '\(spec)': ftruncate of the memfd to \(size) bytes failed: \(e); use a smaller size= or free memory")
        }
        let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = Errno.current
            Glibc.close(fd)
            throw DeviceError(.io, "sim device '\(spec)': mmap of \(size) bytes failed: \(e); use a smaller size= or raise the memory limit")
        }
        return (fd, p)
    }

    private static func unmap(_ fd: Int32, _ base: UnsafeMutableRawPointer, _ size: UInt64) {
        munmap(base, Int(size))
        Glibc.close(fd)
    }

    public var state: VFIODeviceState { core.state }

    public func setState(_ target: VFIODeviceState) throws(DeviceError) {
        try core.transition(to: target, activity: memory.workload) { (arc, locked) throws(DeviceError) in
            if arc.startsSaving {
                locked.inner.armed = true
                locked.inner.initialPending = true
                bitmap.clearAll()
            }
            if !VFIOStateMachine.isSaving(arc.to) { locked.inner.armed = false; locked.inner.initialPending = false }
        }
    }

    public func dataFD(for access: DeviceAccess) throws(DeviceError) -> Int32 {
        try core.withOpen(for: access) { _ in fd }
    }

    public func takeDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) {
        try core.withOpen(in: VFIOStateMachine.savingStates, to: "take dirty chunks") { (locked) throws(DeviceError) in
            if locked.inner.initialPending {
                bitmap.clearAll()
                locked.inner.initialPending = false
                chunks.reserveCapacity(chunks.count + chunkCount)
                for i in 0 ..< UInt64(chunkCount) { chunks.append(i) }
            } else {
                bitmap.take(into: &chunks)
            }
        }
    }

    public func peekDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) {
        try core.withOpen { (locked) throws(DeviceError) in
            if locked.inner.initialPending {
                for i in 0 ..< UInt64(chunkCount) { chunks.append(i) }
            } else {
                bitmap.peek(into: &chunks)
            }
        }
    }

    /// Bytes of the chunks whose bits are set (the last chunk counted at its real length).
    private func bitmapBytes() -> UInt64 {
        let chunk = UInt64(trackingChunkSize)
        var bytes = UInt64(bitmap.popcount) * chunk
        if bytes > 0, bitmap.isSet(chunkCount - 1) {
            let lastLen = size - UInt64(chunkCount - 1) * chunk
            bytes -= chunk - lastLen
        }
        return bytes
    }

    public func dirtyByteCount() -> UInt64 {
        core.withLock { locked in
            !locked.inner.armed || locked.inner.initialPending ? size : bitmapBytes()
        }
    }

    public func precopyInfo() throws(DeviceError) -> PrecopyInfo {
        try core.withOpen(in: [.preCopy, .preCopyP2P], to: "report pre-copy info") { locked in
            locked.inner.initialPending ? PrecopyInfo(initialBytes: size, dirtyBytes: 0)
                                        : PrecopyInfo(initialBytes: 0, dirtyBytes: bitmapBytes())
        }
    }

    public func stopCopySize() throws(DeviceError) -> UInt64 {
        dirtyByteCount() + UInt64(Self.config.count)
    }

    public func saveConfig() throws(DeviceError) -> [UInt8] {
        try core.saveConfig { _ in
            let generation = memory.generation
            var out = Self.config.head(size: size)
            out.appendLE(seed)
            out.appendLE(generation)
            var r = seed ^ (generation &* 0x9E37_79B9_7F4A_7C15)
            for _ in 0 ..< 3 { r = ContentGenerator.mix(r); out.appendLE(r) }
            return out
        }
    }

    public func loadConfig(_ bytes: [UInt8]) throws(DeviceError) {
        try core.loadConfig(bytes, format: Self.config, size: size)
    }

    /// XXH3-64 of the image (the config is not included).
    public func digest() throws(DeviceError) -> UInt64 {
        try core.withOpen { _ in memory.digest }
    }

    public func close() {
        core.close { _ in memory.release() }
    }

    /// Pages the workload has written so far (its generation).
    package var pagesWritten: UInt64 { memory.generation }

    /// The workload's running time and the bytes of pages it has written for it (4 KiB a page
    /// write, rewrites included: what `dirty-rate` counts); nil without a workload.
    package var workloadProgress: (running: Duration, bytes: UInt64)? {
        memory.workload.map { w in let p = w.progress; return (p.running, p.pages * DirtySchedule.pageSize) }
    }

    /// Test hook: writes `bytes` at `offset` the way the device would (through its mapping) and
    /// marks the chunk dirty.
    public func simulateDeviceWrite(at offset: UInt64, _ bytes: [UInt8]) {
        core.withLock { locked in
            guard !locked.isClosed, offset + UInt64(bytes.count) <= size, !bytes.isEmpty else { return }
            bytes.withUnsafeBytes { (memory.base + Int(offset)).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            let first = offset / UInt64(trackingChunkSize)
            let last = (offset + UInt64(bytes.count) - 1) / UInt64(trackingChunkSize)
            for c in first ... last { bitmap.set(Int(c)) }
        }
    }
}

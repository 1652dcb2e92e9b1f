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
///   `DirtyingWorkload` thread writes `dirty-rate` bytes per second of 4 KiB pages. The workload is
///   paused and quiesced (no write after `setState` returns) when the device leaves the running
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

import CXXHash
import Foundation

public final class SimulatedDevice: AddressableDevice, @unchecked Sendable {
    // Invariant: `lock` guards every mutable stored property (state, tracking flags, config, the
    // mapping). The dirty bitmap is atomic and is shared with the workload thread without the lock;
    // the image memory is written by the workload thread only while the device is in a running
    // state (the workload is quiesced under the lock before the state leaves them).
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
    public let migrationFlags: VFIOMigrationFlags = [.stopCopy, .preCopy]

    static let configSize = 64
    static let configMagic: UInt64 = 0x4746_434D_4953_5344  // "DSSIMCFG" little-endian

    private let lock = NSLock()
    private var current: VFIODeviceState
    private var armed = false
    private var initialPending = false
    private var loadedConfig: [UInt8]?
    private var closed = false
    private var fd: Int32
    private var base: UnsafeMutableRawPointer?
    private let bitmap: AtomicBitmap
    private let chunkCount: Int
    private let workload: DirtyingWorkload?

    /// A source device: content of `profile`/`seed`, in RUNNING, dirtied at `dirtyRate` bytes/s.
    public init(size: UInt64, dirtyRate: UInt64 = 0, hotFraction: Double = 0.1, profile: ContentProfile = .mixed,
                seed: UInt64 = 1, chunkSize: Int = 4 << 10, spec: String? = nil) throws(DeviceError) {
        let text = spec ?? "sim:size=\(size),dirty-rate=\(dirtyRate),hot=\(hotFraction),profile=\(profile.rawValue),seed=\(seed),chunk=\(chunkSize)"
        (fd, base) = try Self.makeMapping(size: size, chunkSize: chunkSize, spec: text, populate: true)
        self.spec = text
        self.size = size
        trackingChunkSize = chunkSize
        self.seed = seed
        self.profile = profile
        self.dirtyRate = dirtyRate
        self.hotFraction = hotFraction
        isDestination = false
        current = .running
        chunkCount = Int((size + UInt64(chunkSize) - 1) / UInt64(chunkSize))
        bitmap = AtomicBitmap(bitCount: chunkCount)
        ContentGenerator.fill(UnsafeMutableRawBufferPointer(start: base, count: Int(size)), profile: profile, seed: seed, offset: 0)
        if dirtyRate > 0 {
            workload = DirtyingWorkload(base: base!, size: size, rate: dirtyRate, hotFraction: hotFraction, seed: seed,
                                        bitmap: bitmap, chunkShift: chunkSize.trailingZeroBitCount)
            workload?.resume()
        } else {
            workload = nil
        }
    }

    /// A destination device: `destinationSize` zero bytes, in RESUMING, no workload.
    public init(destinationSize: UInt64, chunkSize: Int = 4 << 10, spec: String? = nil) throws(DeviceError) {
        let text = spec ?? "sim:size=\(destinationSize)"
        // Memory is allocated now, as a real destination reserves device memory before it
        // resumes, not page by page inside the migration.
        (fd, base) = try Self.makeMapping(size: destinationSize, chunkSize: chunkSize, spec: text, populate: true)
        self.spec = text
        size = destinationSize
        trackingChunkSize = chunkSize
        seed = 0
        profile = .zero
        dirtyRate = 0
        hotFraction = 0
        isDestination = true
        current = .resuming
        chunkCount = Int((destinationSize + UInt64(chunkSize) - 1) / UInt64(chunkSize))
        bitmap = AtomicBitmap(bitCount: chunkCount)
        workload = nil
    }

    deinit { close() }

    /// `populate` pre-faults the whole mapping (MAP_POPULATE), much faster than faulting page by
    /// page while the content is generated.
    private static func makeMapping(size: UInt64, chunkSize: Int, spec: String, populate: Bool = false) throws(DeviceError) -> (Int32, UnsafeMutableRawPointer?) {
        guard size > 0, size % 4096 == 0 else {
            throw DeviceError(.badSpec, "sim device '\(spec)': size \(size) must be a positive multiple of 4K")
        }
        guard chunkSize >= 4096, chunkSize & (chunkSize - 1) == 0 else {
            throw DeviceError(.badSpec, "sim device '\(spec)': chunk \(chunkSize) must be a power of two of at least 4K")
        }
        let fd = ds_memfd_create("ds-sim", 0)
        guard fd >= 0 else {
            throw DeviceError(.io, "sim device '\(spec)': memfd_create failed: \(errnoText()); check that memfd is available")
        }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let e = errnoText()
            Glibc.close(fd)
            throw DeviceError(.io, "sim device '\(spec)': ftruncate of the memfd to \(size) bytes failed: \(e); use a smaller size= or free memory")
        }
        let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = errnoText()
            Glibc.close(fd)
            throw DeviceError(.io, "sim device '\(spec)': mmap of \(size) bytes failed: \(e); use a smaller size= or raise the memory limit")
        }
        return (fd, p)
    }

    public var state: VFIODeviceState {
        lock.lock(); defer { lock.unlock() }
        return current
    }

    public func setState(_ target: VFIODeviceState) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        try walkArcs(from: current, to: target, flags: migrationFlags, device: "sim device") { (from, next) throws(DeviceError) in
            let wasRunning = VFIOStateMachine.isRunning(from)
            let willRun = VFIOStateMachine.isRunning(next)
            if wasRunning && !willRun { workload?.pause() }
            if VFIOStateMachine.isSaving(next) && !VFIOStateMachine.isSaving(from) {
                armed = true
                initialPending = true
                bitmap.clearAll()
            }
            if !VFIOStateMachine.isSaving(next) { armed = false; initialPending = false }
            current = next
            if willRun && !wasRunning { workload?.resume() }
        }
    }

    private func checkOpen() throws(DeviceError) {
        if closed { throw DeviceError(.invalidState, "sim device '\(spec)': the device is closed; make a new one") }
    }

    public func dataFD(for access: DeviceAccess) throws(DeviceError) -> Int32 {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        switch access {
        case .save: guard VFIOStateMachine.isSaving(current) else { throw accessError("sim device", .save, current) }
        case .load: guard current == .resuming else { throw accessError("sim device", .load, current) }
        }
        return fd
    }

    public func takeDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard VFIOStateMachine.isSaving(current) else {
            throw DeviceError(.invalidState, "sim device: cannot take dirty chunks in state \(vfioName(current)); dirty tracking runs in PRE_COPY, PRE_COPY_P2P and STOP_COPY")
        }
        if initialPending {
            bitmap.clearAll()
            initialPending = false
            chunks.reserveCapacity(chunks.count + chunkCount)
            for i in 0 ..< UInt64(chunkCount) { chunks.append(i) }
        } else {
            bitmap.take(into: &chunks)
        }
    }

    public func peekDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        if initialPending {
            for i in 0 ..< UInt64(chunkCount) { chunks.append(i) }
        } else {
            bitmap.peek(into: &chunks)
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
        lock.lock(); defer { lock.unlock() }
        if !armed || initialPending { return size }
        return bitmapBytes()
    }

    public func precopyInfo() throws(DeviceError) -> PrecopyInfo {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard current == .preCopy || current == .preCopyP2P else {
            throw DeviceError(.invalidState, "sim device: pre-copy info is only available in PRE_COPY and PRE_COPY_P2P, not in \(vfioName(current))")
        }
        return initialPending ? PrecopyInfo(initialBytes: size, dirtyBytes: 0) : PrecopyInfo(initialBytes: 0, dirtyBytes: bitmapBytes())
    }

    public func stopCopySize() throws(DeviceError) -> UInt64 {
        dirtyByteCount() + UInt64(Self.configSize)
    }

    public func saveConfig() throws(DeviceError) -> [UInt8] {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        if let loadedConfig { return loadedConfig }
        let generation = workload?.pagesWritten.load(ordering: .relaxed) ?? 0
        var words: [UInt64] = [Self.configMagic, 1, size, seed, generation]
        var r = seed ^ (generation &* 0x9E37_79B9_7F4A_7C15)
        for _ in 0 ..< 3 { r = ContentGenerator.mix(r); words.append(r) }
        return words.withUnsafeBytes { Array($0) }
    }

    public func loadConfig(_ bytes: [UInt8]) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard current == .resuming else {
            throw DeviceError(.invalidState, "sim device: cannot load a config in state \(vfioName(current)); configs are loaded in RESUMING only")
        }
        guard bytes.count == Self.configSize else {
            throw DeviceError(.malformedStream, "sim device: config is \(bytes.count) bytes, expected \(Self.configSize); the source is not a sim device or the config was cut")
        }
        let words = bytes.withUnsafeBytes { raw in (0 ..< 8).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self) } }
        guard words[0] == Self.configMagic, words[1] == 1 else {
            throw DeviceError(.malformedStream, "sim device: config has a bad magic or version (bytes 0..<16); the source is not a sim device or the config is corrupt")
        }
        guard words[2] == size else {
            throw DeviceError(.malformedStream, "sim device: config is for a device of \(words[2]) bytes but this device has \(size); make the destination with the source's size")
        }
        loadedConfig = bytes
    }

    /// XXH3-64 of the image (the config is not included).
    public func digest() throws(DeviceError) -> UInt64 {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        return xxh3(base, Int(size))
    }

    public func close() {
        lock.lock(); defer { lock.unlock() }
        if closed { return }
        closed = true
        workload?.stop()
        if let base { munmap(base, Int(size)) }
        base = nil
        Glibc.close(fd)
        fd = -1
    }

    /// Test hook: writes `bytes` at `offset` the way the device would (through its mapping) and
    /// marks the chunk dirty.
    public func simulateDeviceWrite(at offset: UInt64, _ bytes: [UInt8]) {
        lock.lock(); defer { lock.unlock() }
        guard let base, offset + UInt64(bytes.count) <= size, !bytes.isEmpty else { return }
        bytes.withUnsafeBytes { (base + Int(offset)).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let first = offset / UInt64(trackingChunkSize)
        let last = (offset + UInt64(bytes.count) - 1) / UInt64(trackingChunkSize)
        for c in first ... last { bitmap.set(Int(c)) }
    }
}

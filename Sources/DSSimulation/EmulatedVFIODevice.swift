/// `vfio-emu:`: an emulated VFIO v2 device whose state leaves it as an opaque, ordered stream
/// (`data_fd` semantics), for testing the stream data plane without hardware.
///
/// Spec: `vfio-emu:size=64M,dirty-rate=8M,seed=1`.
///
/// The internal state is `size` bytes of `mixed` content; while running, a `DirtyingWorkload`
/// writes `dirty-rate` bytes/s of 4 KiB pages (10% hot region) and marks them in a per-page bitmap.
///
/// Stream format (private to this device; every field little-endian). A stream is a sequence of
/// records `[kind u8][offset u64][length u32][payload: length bytes]`:
/// - `H` (0x48) header, first and only once: offset 0, payload (20 bytes) = magic `DSVFIOEM`,
///   version u32 = 1, state size u64;
/// - `D` (0x44) data: payload (1 ... 65536 bytes) = the state at `offset ..< offset+length`;
/// - `T` (0x54) trailer, last, STOP_COPY only: offset 0, payload (24 bytes) = XXH3-64 of the final
///   state, XXH3-64 of every stream byte before the trailer, number of records before the trailer.
///
/// Saving: entering PRE_COPY (or STOP_COPY without pre-copy) starts a stream: the header, then the
/// whole state as 64 KiB records (the initial bytes); after that, each page the workload dirtied
/// becomes a 4 KiB record, read from the state when it is emitted (its bit was cleared first, so
/// a later write makes it dirty again). In PRE_COPY `read` returns 0 when nothing is available now;
/// in STOP_COPY it returns the remaining dirty records, the trailer, then 0 for end of stream.
/// `read` fills as much of any buffer as it can and continues a partly read record next time.
///
/// Loading: `write` takes the stream in order, split anywhere; each record header is checked
/// against bounds before its payload is accepted, and any fault is `.malformedStream` naming the
/// stream offset. After a fault, later writes repeat the error. RESUMING -> STOP checks that the
/// trailer arrived and that the state digest matches; if not, `setState` throws `.malformedStream`
/// and the device is left in ERROR, as a real driver that fails to restore its state would be (the
/// destination must then be discarded).

import Glibc
import DSDevices
import DSSupport

public final class EmulatedVFIODevice: StreamDevice, @unchecked Sendable {
    // Invariant: `core` guards the state; `saver` and `loader` are touched only inside `core`'s
    // lock. `memory` is allocated by `init` and freed by `close`, after which `core` refuses every
    // access. The dirty bitmap is atomic and shared with the workload thread without the lock;
    // the state bytes are written by the workload thread only while the device is in a running
    // state.
    public let spec: String
    public let size: UInt64
    public let seed: UInt64
    public let dirtyRate: UInt64
    /// True for a device made with `init(destinationSize:)`.
    public let isDestination: Bool
    public var dataKind: DeviceDataKind { .orderedStream }
    public var migrationFlags: VFIOMigrationFlags { core.flags }

    static let config = ConfigBlob(magic: 0x4746_4355_4D45_5344, count: 32, kind: "vfio-emu device")  // "DSEMUCFG"

    private let core: DeviceCore<Void>
    private let memory: SimulatedMemory
    private let saver: EmulatedStreamSaver
    private let loader: EmulatedStreamLoader

    /// A source device: `size` bytes of seeded content, in RUNNING, dirtied at `dirtyRate` bytes/s.
    public init(size: UInt64, dirtyRate: UInt64 = 0, seed: UInt64 = 1, spec: String? = nil) throws(DeviceError) {
        let text = spec ?? "vfio-emu:size=\(size),dirty-rate=\(dirtyRate),seed=\(seed)"
        let (saveHash, loadHash) = try Self.hashers(spec: text)
        memory = try Self.allocate(size: size, spec: text, content: .mixed, seed: seed, dirtyRate: dirtyRate)
        self.spec = text
        self.size = size
        self.seed = seed
        self.dirtyRate = dirtyRate
        isDestination = false
        core = DeviceCore(name: "vfio-emu device", flags: [.stopCopy, .preCopy], state: .running, inner: ())
        saver = EmulatedStreamSaver(memory: memory.base, size: size, bitmap: memory.bitmap, hash: saveHash)
        loader = EmulatedStreamLoader(memory: memory.base, size: size, hash: loadHash)
    }

    /// A destination device: `destinationSize` zero bytes, in RESUMING.
    public init(destinationSize: UInt64, spec: String? = nil) throws(DeviceError) {
        let text = spec ?? "vfio-emu:size=\(destinationSize)"
        let (saveHash, loadHash) = try Self.hashers(spec: text)
        memory = try Self.allocate(size: destinationSize, spec: text, content: .zero, seed: 0, dirtyRate: 0)
        self.spec = text
        size = destinationSize
        seed = 0
        dirtyRate = 0
        isDestination = true
        core = DeviceCore(name: "vfio-emu device", flags: [.stopCopy, .preCopy], state: .resuming, inner: ())
        saver = EmulatedStreamSaver(memory: memory.base, size: destinationSize, bitmap: memory.bitmap, hash: saveHash)
        loader = EmulatedStreamLoader(memory: memory.base, size: destinationSize, hash: loadHash)
    }

    deinit { close() }

    /// The stream's two hash states, made before the memory so a failure leaves nothing behind.
    private static func hashers(spec: String) throws(DeviceError) -> (XXH3Stream, XXH3Stream) {
        do { return (try XXH3Stream(), try XXH3Stream()) } catch {
            throw DeviceError(.io, "vfio-emu device '\(spec)': cannot allocate its stream hash states: \(error)")
        }
    }

    /// `size` bytes of `content` (malloc), dirtied in 4 KiB pages at `dirtyRate` bytes/s (10% hot).
    private static func allocate(size: UInt64, spec: String, content: ContentProfile, seed: UInt64,
                                 dirtyRate: UInt64) throws(DeviceError) -> SimulatedMemory {
        guard size > 0, size % 4096 == 0 else {
            throw DeviceError(.badSpec, "vfio-emu device '\(spec)': size \(size) must be a positive multiple of 4K")
        }
        guard let p = malloc(Int(size)) else {
            throw DeviceError(.io, "vfio-emu device '\(spec)': cannot allocate \(size) bytes of state; use a smaller size=")
        }
        return try SimulatedMemory(base: p, size: size, chunkSize: Int(EmulatedStream.pageSize), content: content, seed: seed,
                               dirtyRate: dirtyRate, hotFraction: 0.1) { free(p) }
    }

    public var state: VFIODeviceState { core.state }

    /// Leaving RESUMING checks the loaded stream; if it is wrong or incomplete the device is left
    /// in ERROR, as a real driver that fails to restore its state would be.
    public func setState(_ target: VFIODeviceState) throws(DeviceError) {
        try core.transition(to: target, activity: memory.workload) { (arc, locked) throws(DeviceError) in
            if arc.leavesResuming {
                do throws(DeviceError) {
                    try loader.finish()
                } catch {
                    locked.state = .error
                    throw error
                }
            }
            if arc.to == .resuming { loader.reset() }
            if arc.startsSaving { saver.start() }
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(DeviceError) -> Int {
        try core.withOpen(for: .save) { locked in saver.read(into: buffer, final: locked.state == .stopCopy) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(DeviceError) {
        try core.withOpen(for: .load) { (_) throws(DeviceError) in try loader.write(bytes) }
    }

    public func precopyInfo() throws(DeviceError) -> PrecopyInfo {
        try core.withOpen(in: [.preCopy, .preCopyP2P], to: "report pre-copy info") { _ in
            PrecopyInfo(initialBytes: saver.initialRemaining, dirtyBytes: saver.dirtyRemaining)
        }
    }

    public func stopCopySize() throws(DeviceError) -> UInt64 {
        try core.withOpen { locked in
            VFIOStateMachine.isSaving(locked.state) ? saver.remaining : EmulatedStream.wholeStreamSize(size)
        }
    }

    // MARK: Config

    public func saveConfig() throws(DeviceError) -> [UInt8] {
        try core.saveConfig { _ in
            var out = Self.config.head(size: size)
            out.appendLE(seed)
            out.appendLE(memory.generation)
            return out
        }
    }

    public func loadConfig(_ bytes: [UInt8]) throws(DeviceError) {
        try core.loadConfig(bytes, format: Self.config, size: size)
    }

    /// XXH3-64 of the internal state (the config is not included).
    public func digest() throws(DeviceError) -> UInt64 {
        try core.withOpen { _ in memory.digest }
    }

    public func close() {
        core.close { _ in memory.release() }
    }
}

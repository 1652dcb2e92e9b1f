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

import CXXHash
import Foundation
import DSSupport

public final class EmulatedVFIODevice: StreamDevice, @unchecked Sendable {
    // Invariant: `lock` guards every mutable stored property (state, stream cursors, parser). The
    // dirty bitmap is atomic and shared with the workload thread without the lock; the state bytes
    // are written by the workload thread only while the device is in a running state.
    public let spec: String
    public let size: UInt64
    public let seed: UInt64
    public let dirtyRate: UInt64
    /// True for a device made with `init(destinationSize:)`.
    public let isDestination: Bool
    public var dataKind: DeviceDataKind { .orderedStream }
    public let migrationFlags: VFIOMigrationFlags = [.stopCopy, .preCopy]

    static let recordHeaderSize = 13
    static let maxPayload = 64 * 1024
    static let headerPayload = 20
    static let trailerPayload = 24
    static let kindHeader: UInt8 = 0x48
    static let kindData: UInt8 = 0x44
    static let kindTrailer: UInt8 = 0x54
    static let magic: UInt64 = 0x4D45_4F49_4646_5344  // "DSVFIOEM" little-endian
    static let version: UInt32 = 1
    static let pageSize: UInt64 = 4096
    static let configSize = 32
    static let configMagic: UInt64 = 0x4746_4355_4D45_5344  // "DSEMUCFG"

    private let lock = NSLock()
    private var current: VFIODeviceState
    private var closed = false
    private var memory: UnsafeMutableRawPointer?
    private let bitmap: AtomicBitmap
    private let pageCount: Int
    private let workload: DirtyingWorkload?
    private var loadedConfig: [UInt8]?

    // Saving side.
    private var headerSent = false
    private var initialCursor: UInt64 = 0
    private var pending: [UInt8] = []
    private var pendingPos = 0
    private var pendingIsInitial = false
    private var dirtyQueue: [UInt64] = []
    private var trailerSent = false
    private var txRecords: UInt64 = 0
    private let txHash = XXH3Stream()

    // Loading side.
    private var rec: [UInt8] = []
    private var recLength = 0
    private var recStart: UInt64 = 0
    private var rxOffset: UInt64 = 0
    private var rxRecords: UInt64 = 0
    private var headerReceived = false
    private var trailerReceived = false
    private var expectedDigest: UInt64 = 0
    private var parseError: DeviceError?
    private let rxHash = XXH3Stream()

    /// A source device: `size` bytes of seeded content, in RUNNING, dirtied at `dirtyRate` bytes/s.
    public init(size: UInt64, dirtyRate: UInt64 = 0, seed: UInt64 = 1, spec: String? = nil) throws(DeviceError) {
        let text = spec ?? "vfio-emu:size=\(size),dirty-rate=\(dirtyRate),seed=\(seed)"
        memory = try Self.allocate(size: size, spec: text)
        self.spec = text
        self.size = size
        self.seed = seed
        self.dirtyRate = dirtyRate
        isDestination = false
        current = .running
        pageCount = Int((size + Self.pageSize - 1) / Self.pageSize)
        bitmap = AtomicBitmap(bitCount: pageCount)
        ContentGenerator.fill(UnsafeMutableRawBufferPointer(start: memory, count: Int(size)), profile: .mixed, seed: seed, offset: 0)
        if dirtyRate > 0 {
            workload = DirtyingWorkload(base: memory!, size: size, rate: dirtyRate, hotFraction: 0.1, seed: seed,
                                        bitmap: bitmap, chunkShift: 12)
            workload?.resume()
        } else {
            workload = nil
        }
    }

    /// A destination device: `destinationSize` zero bytes, in RESUMING.
    public init(destinationSize: UInt64, spec: String? = nil) throws(DeviceError) {
        let text = spec ?? "vfio-emu:size=\(destinationSize)"
        memory = try Self.allocate(size: destinationSize, spec: text)
        memset(memory!, 0, Int(destinationSize))
        self.spec = text
        size = destinationSize
        seed = 0
        dirtyRate = 0
        isDestination = true
        current = .resuming
        pageCount = Int((destinationSize + Self.pageSize - 1) / Self.pageSize)
        bitmap = AtomicBitmap(bitCount: pageCount)
        workload = nil
    }

    deinit { close() }

    private static func allocate(size: UInt64, spec: String) throws(DeviceError) -> UnsafeMutableRawPointer {
        guard size > 0, size % 4096 == 0 else {
            throw DeviceError(.badSpec, "vfio-emu device '\(spec)': size \(size) must be a positive multiple of 4K")
        }
        guard let p = malloc(Int(size)) else {
            throw DeviceError(.io, "vfio-emu device '\(spec)': cannot allocate \(size) bytes of state; use a smaller size=")
        }
        return p
    }

    private func checkOpen() throws(DeviceError) {
        if closed { throw DeviceError(.invalidState, "vfio-emu device '\(spec)': the device is closed; make a new one") }
    }

    public var state: VFIODeviceState {
        lock.lock(); defer { lock.unlock() }
        return current
    }

    public func setState(_ target: VFIODeviceState) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        try walkArcs(from: current, to: target, flags: migrationFlags, device: "vfio-emu device") { (from, next) throws(DeviceError) in
            let wasRunning = VFIOStateMachine.isRunning(from)
            let willRun = VFIOStateMachine.isRunning(next)
            if wasRunning && !willRun { workload?.pause() }
            if from == .resuming && next != .resuming {
                do throws(DeviceError) {
                    try finishLoading()
                } catch {
                    current = .error
                    throw error
                }
            }
            if next == .resuming { resetParser() }
            if VFIOStateMachine.isSaving(next) && !VFIOStateMachine.isSaving(from) { startStream() }
            current = next
            if willRun && !wasRunning { workload?.resume() }
        }
    }

    // MARK: Saving

    private func startStream() {
        headerSent = false
        initialCursor = 0
        pending.removeAll(keepingCapacity: true)
        pendingPos = 0
        pendingIsInitial = false
        dirtyQueue.removeAll()
        trailerSent = false
        txRecords = 0
        txHash.reset()
        bitmap.clearAll()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(DeviceError) -> Int {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard VFIOStateMachine.isSaving(current) else { throw accessError("vfio-emu device", .save, current) }
        guard let out = buffer.baseAddress else { return 0 }
        var written = 0
        while written < buffer.count {
            if pendingPos < pending.count {
                let n = min(buffer.count - written, pending.count - pendingPos)
                pending.withUnsafeBytes { (out + written).copyMemory(from: $0.baseAddress! + pendingPos, byteCount: n) }
                pendingPos += n
                written += n
                continue
            }
            if !produceRecord() { break }
        }
        return written
    }

    private func beginRecord(kind: UInt8, offset: UInt64, length: Int) {
        pending.removeAll(keepingCapacity: true)
        pendingPos = 0
        pending.append(kind)
        pending.appendLE(offset)
        pending.appendLE(UInt32(length))
    }

    private func finishRecord() {
        txHash.update(pending)
        txRecords += 1
    }

    private func emitData(offset: UInt64, length: Int) {
        beginRecord(kind: Self.kindData, offset: offset, length: length)
        pending.append(contentsOf: UnsafeRawBufferPointer(start: memory! + Int(offset), count: length))
        finishRecord()
    }

    /// Puts the next record in `pending`; false when there is none now.
    private func produceRecord() -> Bool {
        if !headerSent {
            beginRecord(kind: Self.kindHeader, offset: 0, length: Self.headerPayload)
            pending.appendLE(Self.magic)
            pending.appendLE(Self.version)
            pending.appendLE(size)
            finishRecord()
            headerSent = true
            pendingIsInitial = true
            return true
        }
        if initialCursor < size {
            let n = Int(min(UInt64(Self.maxPayload), size - initialCursor))
            emitData(offset: initialCursor, length: n)
            initialCursor += UInt64(n)
            pendingIsInitial = true
            return true
        }
        if dirtyQueue.isEmpty {
            for i in 0 ..< bitmap.wordCount {
                var w = bitmap.takeWord(i)
                while w != 0 {
                    dirtyQueue.append(UInt64(i * 64 + w.trailingZeroBitCount))
                    w &= w - 1
                }
                if !dirtyQueue.isEmpty { dirtyQueue.reverse(); break }
            }
        }
        if let page = dirtyQueue.popLast() {
            let offset = page * Self.pageSize
            emitData(offset: offset, length: Int(min(Self.pageSize, size - offset)))
            pendingIsInitial = false
            return true
        }
        if current == .stopCopy && !trailerSent {
            let streamDigest = txHash.digest
            let records = txRecords
            beginRecord(kind: Self.kindTrailer, offset: 0, length: Self.trailerPayload)
            pending.appendLE(xxh3(memory, Int(size)))
            pending.appendLE(streamDigest)
            pending.appendLE(records)
            trailerSent = true
            pendingIsInitial = false
            return true
        }
        return false
    }

    private func initialRemaining() -> UInt64 {
        let left = size - initialCursor
        var bytes = left + (left + UInt64(Self.maxPayload) - 1) / UInt64(Self.maxPayload) * UInt64(Self.recordHeaderSize)
        if !headerSent { bytes += UInt64(Self.recordHeaderSize + Self.headerPayload) }
        if pendingIsInitial { bytes += UInt64(pending.count - pendingPos) }
        return bytes
    }

    private func dirtyRemaining() -> UInt64 {
        var bytes = UInt64(bitmap.popcount + dirtyQueue.count) * (Self.pageSize + UInt64(Self.recordHeaderSize))
        if !pendingIsInitial { bytes += UInt64(pending.count - pendingPos) }
        return bytes
    }

    public func precopyInfo() throws(DeviceError) -> PrecopyInfo {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard current == .preCopy || current == .preCopyP2P else {
            throw DeviceError(.invalidState, "vfio-emu device: pre-copy info is only available in PRE_COPY and PRE_COPY_P2P, not in \(vfioName(current))")
        }
        return PrecopyInfo(initialBytes: initialRemaining(), dirtyBytes: dirtyRemaining())
    }

    public func stopCopySize() throws(DeviceError) -> UInt64 {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        let trailer = UInt64(Self.recordHeaderSize + Self.trailerPayload)
        if VFIOStateMachine.isSaving(current) {
            return initialRemaining() + dirtyRemaining() + (trailerSent ? 0 : trailer)
        }
        let records = (size + UInt64(Self.maxPayload) - 1) / UInt64(Self.maxPayload)
        return UInt64(Self.recordHeaderSize + Self.headerPayload) + size + records * UInt64(Self.recordHeaderSize) + trailer
    }

    // MARK: Config

    public func saveConfig() throws(DeviceError) -> [UInt8] {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        if let loadedConfig { return loadedConfig }
        var out: [UInt8] = []
        out.appendLE(Self.configMagic)
        out.appendLE(size)
        out.appendLE(seed)
        out.appendLE(workload?.pagesWritten.load(ordering: .relaxed) ?? 0)
        return out
    }

    public func loadConfig(_ bytes: [UInt8]) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard current == .resuming else {
            throw DeviceError(.invalidState, "vfio-emu device: cannot load a config in state \(vfioName(current)); configs are loaded in RESUMING only")
        }
        guard bytes.count == Self.configSize, bytes.loadLE(at: 0, as: UInt64.self) == Self.configMagic else {
            throw DeviceError(.malformedStream, "vfio-emu device: config of \(bytes.count) bytes has no DSEMUCFG magic; the source is not a vfio-emu device or the config is corrupt")
        }
        guard bytes.loadLE(at: 8, as: UInt64.self) == size else {
            throw DeviceError(.malformedStream, "vfio-emu device: config is for a device of \(bytes.loadLE(at: 8, as: UInt64.self)) bytes but this device has \(size); make the destination with the source's size")
        }
        loadedConfig = bytes
    }

    // MARK: Loading

    private func resetParser() {
        rec.removeAll(keepingCapacity: true)
        recLength = 0
        recStart = 0
        rxOffset = 0
        rxRecords = 0
        headerReceived = false
        trailerReceived = false
        expectedDigest = 0
        parseError = nil
        rxHash.reset()
    }

    private func malformed(_ what: String) -> DeviceError {
        DeviceError(.malformedStream, "vfio-emu device: malformed migration stream: \(what); the stream must come unchanged, in order, from a vfio-emu source of the same size")
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard current == .resuming else { throw accessError("vfio-emu device", .load, current) }
        if let parseError { throw parseError }
        do throws(DeviceError) {
            try parse(bytes)
        } catch {
            parseError = error
            throw error
        }
    }

    private func parse(_ bytes: UnsafeRawBufferPointer) throws(DeviceError) {
        let h = Self.recordHeaderSize
        var i = 0
        while i < bytes.count {
            if trailerReceived {
                throw malformed("\(bytes.count - i) unexpected byte(s) after the trailer at stream offset \(rxOffset)")
            }
            let need = rec.count < h ? h - rec.count : h + recLength - rec.count
            let n = min(need, bytes.count - i)
            if rec.count == 0 { recStart = rxOffset }
            rec.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i ..< i + n]))
            i += n
            rxOffset += UInt64(n)
            if rec.count == h { try checkRecordHeader() }
            if rec.count > h && rec.count == h + recLength {
                try applyRecord()
                rec.removeAll(keepingCapacity: true)
            }
        }
    }

    private func checkRecordHeader() throws(DeviceError) {
        let kind = rec[0]
        let offset = rec.loadLE(at: 1, as: UInt64.self)
        let length = Int(rec.loadLE(at: 9, as: UInt32.self))
        if rxRecords == 0 && kind != Self.kindHeader {
            throw malformed("the stream does not begin with a header record (found kind 0x\(String(kind, radix: 16)) at stream offset \(recStart))")
        }
        if (kind == Self.kindHeader || kind == Self.kindTrailer) && offset != 0 {
            throw malformed("\(kind == Self.kindHeader ? "header" : "trailer") record at stream offset \(recStart) has offset \(offset), expected 0")
        }
        switch kind {
        case Self.kindHeader:
            guard rxRecords == 0 else { throw malformed("a second header record at stream offset \(recStart)") }
            guard length == Self.headerPayload else {
                throw malformed("header record at stream offset \(recStart) has length \(length), expected \(Self.headerPayload)")
            }
        case Self.kindData:
            guard length >= 1 && length <= Self.maxPayload else {
                throw malformed("data record at stream offset \(recStart) has length \(length), outside 1...\(Self.maxPayload)")
            }
            guard offset <= size && UInt64(length) <= size - offset else {
                throw malformed("data record at stream offset \(recStart) covers \(offset)..<\(offset &+ UInt64(length)), beyond the state size \(size)")
            }
        case Self.kindTrailer:
            guard length == Self.trailerPayload else {
                throw malformed("trailer record at stream offset \(recStart) has length \(length), expected \(Self.trailerPayload)")
            }
        default:
            throw malformed("unknown record kind 0x\(String(kind, radix: 16)) at stream offset \(recStart); expected 0x48 (header), 0x44 (data) or 0x54 (trailer)")
        }
        recLength = length
    }

    private func applyRecord() throws(DeviceError) {
        let h = Self.recordHeaderSize
        switch rec[0] {
        case Self.kindHeader:
            guard rec.loadLE(at: h, as: UInt64.self) == Self.magic else {
                throw malformed("bad magic in the header record at stream offset \(recStart + UInt64(h)); this is not a vfio-emu stream")
            }
            let version = rec.loadLE(at: h + 8, as: UInt32.self)
            guard version == Self.version else {
                throw malformed("unsupported stream version \(version) at stream offset \(recStart + UInt64(h) + 8); this device reads version \(Self.version)")
            }
            let streamSize = rec.loadLE(at: h + 12, as: UInt64.self)
            guard streamSize == size else {
                throw malformed("the stream is for a device of \(streamSize) bytes but this device has \(size) (header at stream offset \(recStart))")
            }
            headerReceived = true
        case Self.kindData:
            let offset = rec.loadLE(at: 1, as: UInt64.self)
            rec.withUnsafeBytes { (memory! + Int(offset)).copyMemory(from: $0.baseAddress! + h, byteCount: recLength) }
        default:  // trailer (kinds were checked in checkRecordHeader)
            let records = rec.loadLE(at: h + 16, as: UInt64.self)
            guard records == rxRecords else {
                throw malformed("the trailer at stream offset \(recStart) counts \(records) records but \(rxRecords) arrived")
            }
            let streamDigest = rec.loadLE(at: h + 8, as: UInt64.self)
            guard streamDigest == rxHash.digest else {
                throw malformed("stream digest mismatch at the trailer (stream offset \(recStart)): the bytes before it were changed or reordered")
            }
            expectedDigest = rec.loadLE(at: h, as: UInt64.self)
            trailerReceived = true
            return
        }
        rxHash.update(rec)
        rxRecords += 1
    }

    /// RESUMING -> anything: the stream must be complete and the state must match its digest.
    private func finishLoading() throws(DeviceError) {
        if let parseError { throw parseError }
        guard trailerReceived else {
            throw malformed("stream truncated: no trailer after \(rxOffset) bytes (\(rxRecords) records); the source must be read until read() returns 0 in STOP_COPY and every byte written")
        }
        let actual = xxh3(memory, Int(size))
        guard actual == expectedDigest else {
            throw malformed("state digest mismatch: the trailer says 0x\(String(expectedDigest, radix: 16)) but the loaded state hashes to 0x\(String(actual, radix: 16))")
        }
    }

    /// XXH3-64 of the internal state (the config is not included).
    public func digest() throws(DeviceError) -> UInt64 {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        return xxh3(memory, Int(size))
    }

    public func close() {
        lock.lock(); defer { lock.unlock() }
        if closed { return }
        closed = true
        workload?.stop()
        free(memory)
        memory = nil
    }
}

import Glibc
import DSWire
import DSDevices
import DSTransport
import DSRing
import DSSupport

/// One unit of migration data a channel thread reads and sends.
public enum SaveItem: Sendable, Equatable {
    /// `length` bytes of an addressable device at `offset`.
    case range(device: Int, offset: UInt64, length: Int)
    /// Read the stream device until it has no data now (pre-copy) or ends (stop-copy).
    case drain(device: Int)
}

/// A device header (QEMU: the setup state), sent in a `deviceSection` frame.
public struct DeviceHeader: Equatable, Sendable {
    public var kind: UInt8  // 0 addressable, 1 ordered stream
    public var size: UInt64
    public var flags: UInt64
    public var spec: String
    public func encoded() -> [UInt8] {
        var w = PayloadWriter(); w.u8(kind); w.u64(size); w.u64(flags); w.string(spec); return w.bytes
    }
    public static func decode(_ b: [UInt8]) throws(WireError) -> DeviceHeader {
        var r = PayloadReader(b)
        let h = DeviceHeader(kind: try r.u8(), size: try r.u64(), flags: try r.u64(), spec: try r.string())
        guard h.kind <= 1 else { throw .malformed("unknown device kind \(h.kind)") }
        guard h.size <= UInt64(Int64.max) else { throw .lengthOutOfBounds(field: "device size", value: h.size, limit: UInt64(Int64.max)) }
        return h
    }
}

/// Per-device, per-channel chunk counts: what `initDataSent` and `endOfState` carry so the
/// destination can prove it loaded exactly what was sent (channels keep order, so a count per
/// channel is exact).
public struct DeviceTotals: Equatable, Sendable {
    public var chunksPerChannel: [UInt64]
    public var bytes: UInt64
    public var digest: UInt64?
    public func encoded() -> [UInt8] {
        var w = PayloadWriter()
        w.u64(bytes)
        w.u8(digest == nil ? 0 : 1); w.u64(digest ?? 0)
        w.u16(UInt16(chunksPerChannel.count))
        for c in chunksPerChannel { w.u64(c) }
        return w.bytes
    }
    public static func decode(_ b: [UInt8], channels: Int) throws(WireError) -> DeviceTotals {
        var r = PayloadReader(b)
        let bytes = try r.u64()
        let hasDigest = try r.u8() == 1
        let digest = try r.u64()
        let n = Int(try r.u16())
        guard n == channels else { throw .malformed("device totals for \(n) channels in a \(channels)-channel session") }
        var counts: [UInt64] = []
        for _ in 0..<n { counts.append(try r.u64()) }
        return DeviceTotals(chunksPerChannel: counts, bytes: bytes, digest: hasDigest ? digest : nil)
    }
}

/// The save hooks of one device on the source, after QEMU's VFIO migration: `saveSetup`,
/// `pending`, `iterate` (plan a round), `completePrecopy`, `cleanup`.
public final class DeviceSaver: @unchecked Sendable {
    // @unchecked: the device is thread-safe by protocol; `streamLock` serialises reads of a
    // stream device and its sequence counter.
    public let id: Int
    public let device: any MigratableDevice
    private let streamLock = ConditionLock()
    private var nextSequence: UInt64 = 0
    private var streamEnded = false
    /// The largest run of clean bytes a round sends to join two dirty runs into one frame.
    static let maxGap: UInt64 = 64 << 10

    public init(id: Int, device: any MigratableDevice) {
        self.id = id
        self.device = device
    }

    public var supportsPrecopy: Bool { device.migrationFlags.contains(.preCopy) }

    public var header: DeviceHeader {
        switch device.dataKind {
        case .addressable(let size): DeviceHeader(kind: 0, size: size, flags: device.migrationFlags.rawValue, spec: device.spec)
        case .orderedStream: DeviceHeader(kind: 1, size: 0, flags: device.migrationFlags.rawValue, spec: device.spec)
        }
    }

    /// save_setup: the device enters PRE_COPY (when it supports it) and dirty tracking starts.
    public func saveSetup() throws(DeviceError) {
        if supportsPrecopy { try device.setState(.preCopy) }
    }

    /// state_pending_estimate: a cheap estimate (dirty bytes as the device counts them, or its
    /// pre-copy info), without the gap-closing of a real plan.
    public func pendingEstimate() throws(DeviceError) -> (precopy: UInt64, stopCopyOnly: UInt64) {
        if !supportsPrecopy { return (0, try device.stopCopySize()) }
        if let a = device as? any AddressableDevice { return (a.dirtyByteCount(), 0) }
        let info = try device.precopyInfo()
        return (info.initialBytes + info.dirtyBytes, 0)
    }

    /// state_pending_exact: (bytes the next round would send, bytes only stop-copy can move).
    /// For addressable devices it plans the round on a copy of the dirty bitmap, gaps closed.
    public func pending(chunkSize: Int) throws(DeviceError) -> (precopy: UInt64, stopCopyOnly: UInt64) {
        if !supportsPrecopy { return (0, try device.stopCopySize()) }
        if let a = device as? any AddressableDevice {
            // Exactly what the next plan would send, gaps closed included.
            var chunks: [UInt64] = []
            try a.peekDirtyChunks(into: &chunks)
            var items: [SaveItem] = []
            DeviceSaver.coalesce(&chunks, device: id, trackingChunk: UInt64(a.trackingChunkSize), size: a.size,
                                 chunkSize: chunkSize, into: &items)
            return (items.reduce(0) { if case .range(_, _, let n) = $1 { $0 + UInt64(n) } else { $0 } }, 0)
        }
        let info = try device.precopyInfo()
        return (info.initialBytes + info.dirtyBytes, 0)
    }

    /// Plans one round (save_live_iterate, or the stop-copy round): the dirty ranges of an
    /// addressable device, split into chunks; a drain of a stream device.
    public func plan(chunkSize: Int, into items: inout [SaveItem]) throws(DeviceError) {
        if let a = device as? any AddressableDevice {
            var chunks: [UInt64] = []
            try a.takeDirtyChunks(into: &chunks)
            DeviceSaver.coalesce(&chunks, device: id, trackingChunk: UInt64(a.trackingChunkSize), size: a.size,
                                 chunkSize: chunkSize, into: &items)
        } else {
            streamLock.withLock { streamEnded = false }
            items.append(.drain(device: id))
        }
    }

    /// Turns dirty tracking chunks into transfer items: runs of adjacent pages join, and so do
    /// runs separated by at most `maxGap` clean bytes — re-sending a few unchanged pages costs
    /// less than a frame per scattered page (the bytes are current, so the destination stays
    /// consistent). No item exceeds `chunkSize`.
    static func coalesce(_ chunks: inout [UInt64], device id: Int, trackingChunk track: UInt64, size: UInt64,
                         chunkSize: Int, into items: inout [SaveItem]) {
        chunks.sort()
        var runStart: UInt64 = 0, runEnd: UInt64 = 0  // byte range [runStart, runEnd)
        func flush() {
            var off = runStart
            while off < runEnd {
                let n = Int(min(UInt64(chunkSize), runEnd - off))
                items.append(.range(device: id, offset: off, length: n))
                off += UInt64(n)
            }
        }
        for c in chunks {
            let off = c * track
            let end = min(off + track, size)
            if runEnd > runStart && off >= runEnd && off - runEnd <= maxGap && end - runStart <= UInt64(chunkSize) {
                runEnd = end
            } else {
                flush()
                runStart = off
                runEnd = end
            }
        }
        flush()
    }

    /// complete_precopy, first half: the device stops (STOP_COPY). Returns how long it took.
    public func enterStopCopy() throws(DeviceError) -> Duration {
        let t0 = Monotonic.now
        try device.setState(.stopCopy)
        return Monotonic.now - t0
    }

    /// Reads the next piece of a stream device into `buffer`, with its sequence number; nil
    /// when the device has nothing now (pre-copy) or its stream ended (stop-copy).
    public func readStream(into buffer: UnsafeMutableRawBufferPointer) throws(DeviceError) -> (seq: UInt64, count: Int)? {
        guard let s = device as? any StreamDevice else { return nil }
        var result: (UInt64, Int)?
        var failure: DeviceError?
        streamLock.withLock {
            guard !streamEnded else { return }
            var filled = 0
            do {
                while filled < buffer.count {
                    let n = try s.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
                    if n == 0 { streamEnded = true; break }
                    filled += n
                }
            } catch { failure = error as? DeviceError ?? DeviceError(.io, "\(error)"); return }
            if filled > 0 { result = (nextSequence, filled); nextSequence += 1 }
        }
        if let failure { throw failure }
        return result
    }

    /// cleanup: after success the source device stops; after a failure it runs again with its
    /// state intact.
    public func cleanup(success: Bool) throws(DeviceError) {
        if success {
            if device.state != .stop { try device.setState(.stop) }
        } else if device.state != .running {
            try device.setState(.running)
        }
    }
}

/// The load hooks of one device on the destination: `loadSetup` (RESUMING), `loadState`
/// (chunks, config, end of state), `loadCleanup` (STOP → RUNNING, or left not running).
public final class DeviceLoader: @unchecked Sendable {
    // @unchecked: the device is thread-safe by protocol; `lock` guards the stream turnstile and
    // the counters.
    public let id: Int
    public let device: any MigratableDevice
    public let header: DeviceHeader
    private let lock = ConditionLock()
    private var nextSequence: UInt64 = 0
    private(set) var loadedPerChannel: [UInt64]
    private(set) var bytesLoaded: UInt64 = 0
    private var fd: Int32 = -1

    /// load_setup: checks the source's header against the local device and takes the
    /// device's load fd (it must be in RESUMING).
    public init(id: Int, device: any MigratableDevice, header: DeviceHeader, channels: Int) throws(DeviceError) {
        self.id = id
        self.device = device
        self.header = header
        loadedPerChannel = [UInt64](repeating: 0, count: channels)
        switch device.dataKind {
        case .addressable(let size):
            guard header.kind == 0 else { throw DeviceError(.unsupported, "device \(id): the source sends an ordered stream (\(header.spec)) but \(device.spec) is addressable") }
            guard header.size == size else { throw DeviceError(.unsupported, "device \(id): the source's \(header.spec) has \(header.size) bytes, the destination's \(device.spec) has \(size)") }
            fd = try (device as! any AddressableDevice).dataFD(for: .load)
        case .orderedStream:
            guard header.kind == 1 else { throw DeviceError(.unsupported, "device \(id): the source sends addressable state (\(header.spec)) but \(device.spec) takes an ordered stream") }
            guard device.state == .resuming else { throw DeviceError(.invalidState, "device \(id) (\(device.spec)) is not in RESUMING") }
        }
    }

    /// load_state for a chunk of addressable state.
    public func load(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, channel: Int, ring: Ring, slot: Int) throws(TransferError) {
        guard header.kind == 0 else { throw TransferError(.protocolViolation, "addressable data for stream device \(id)") }
        guard offset <= header.size, UInt64(bytes.count) <= header.size - offset else {
            throw TransferError(.protocolViolation, "chunk at \(offset)+\(bytes.count) outside device \(id)'s \(header.size) bytes")
        }
        do { try ring.writeAll(fd: fd, bytes, offset: offset, slot: slot) } catch {
            throw TransferError(.device, "writing device \(id) (\(device.spec)) at \(offset) failed: \(error)")
        }
        lock.withLock { loadedPerChannel[channel] += 1; bytesLoaded += UInt64(bytes.count) }
    }

    /// load_state for a piece of an ordered stream: waits for its turn (bounded by `timeout`,
    /// ended early by `abort`), then writes it to the device in order.
    public func loadStream(_ bytes: UnsafeRawBufferPointer, seq: UInt64, channel: Int, timeout: Duration,
                           abort: AbortSignal) throws(TransferError) {
        guard header.kind == 1, let s = device as? any StreamDevice else {
            throw TransferError(.protocolViolation, "stream data for addressable device \(id)")
        }
        let mine = lock.withLock { lock.wait(until: { nextSequence >= seq || abort.isAborted }, timeout: timeout) && nextSequence == seq }
        if let e = abort.error { throw e }
        guard mine else {
            let next = lock.withLock { nextSequence }
            if next > seq { throw TransferError(.protocolViolation, "device \(id): stream piece \(seq) arrived twice") }
            throw TransferError(.timeout, "device \(id): waited too long for stream piece \(next) while holding \(seq)")
        }
        do { try s.write(bytes) } catch {
            throw TransferError(.device, "device \(id) (\(device.spec)) refused its stream: \(error)")
        }
        lock.withLock { nextSequence += 1; loadedPerChannel[channel] += 1; bytesLoaded += UInt64(bytes.count); lock.broadcast() }
    }

    public func wake() { lock.withLock { lock.broadcast() } }

    /// Whether every channel has loaded at least `counts` chunks of this device.
    public func hasLoaded(_ counts: [UInt64]) -> Bool {
        lock.withLock { zip(loadedPerChannel, counts).allSatisfy { $0 >= $1 } && loadedPerChannel.count == counts.count }
    }

    public var loadedBytes: UInt64 { lock.withLock { bytesLoaded } }

    /// load_cleanup, first phase: RESUMING → STOP. The device validates what it got; it does
    /// not run yet.
    public func validate() throws(DeviceError) {
        if device.state != .stop { try device.setState(.stop) }
    }

    /// load_cleanup, second phase (after the source's commit): STOP → RUNNING.
    public func run() throws(DeviceError) {
        try device.setState(.running)
    }

    /// Both phases at once, for a caller with no source to wait for (tests, local restores).
    public func resume() throws(DeviceError) {
        try validate()
        try run()
    }
}

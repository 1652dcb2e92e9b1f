import Glibc
import DSWire
import DSDevices
import DSTransport
import DSRing
import DSSupport

/// One unit of migration data a channel thread reads and sends.
package enum SaveItem: Sendable, Equatable {
    /// One `pages` frame of an addressable device: the extents `extents` of the round's plan
    /// (`RoundPlanItems.extents`), gathered back to back behind their table.
    case pages(device: Int, extents: Range<Int>)
    /// Read the stream device until it has no data now (pre-copy) or ends (stop-copy).
    case drain(device: Int)
}

/// A run of dirty bytes of an addressable device: whole tracking chunks (the last one clipped
/// to the device's end), never a clean gap.
package struct Extent: Sendable, Equatable {
    package var offset: UInt64
    package var length: Int
    package init(offset: UInt64, length: Int) { self.offset = offset; self.length = length }
}

/// A round's plan: the frames to send and the extents they carry, plus the dirty bytes the
/// devices' tracking reported for it.
package struct RoundPlanItems: Sendable {
    package var items: [SaveItem] = []
    package var extents: [Extent] = []
    /// Bytes the addressable devices' tracking reported dirty (harvested) for this round.
    package var harvestedBytes: UInt64 = 0
    package init() {}

    /// The device bytes the `pages` items carry.
    package var pageBytes: UInt64 { extents.reduce(0) { $0 + UInt64($1.length) } }
}

/// The save hooks of one device on the source, after QEMU's VFIO migration: `saveSetup`,
/// `pending`, `iterate` (plan a round), `completePrecopy`, `cleanup`.
package final class DeviceSaver: @unchecked Sendable {
    // @unchecked: the device is thread-safe by protocol; `streamLock` serialises reads of a
    // stream device and its sequence counter.
    package let id: Int
    package let device: any MigratableDevice
    private let streamLock = ConditionLock()
    private var nextSequence: UInt64 = 0
    private var streamEnded = false
    /// The dirty-chunk list, reused between rounds (only the planning thread touches it).
    private var chunks: [UInt64] = []
    /// The device's save fd for the round being sent (-1: not in a saving state, no data).
    /// Set by `beginRound` before the channels start, read by them during the round.
    private var roundFD: Int32 = -1
    /// How the round's fd is read: inline for a memfd or tmpfs file (`FileIOPath`).
    private var roundPath: FileIOPath = .ring

    package init(id: Int, device: any MigratableDevice) {
        self.id = id
        self.device = device
    }

    package var supportsPrecopy: Bool { device.migrationFlags.contains(.preCopy) }

    package var kind: DeviceKind {
        if case .addressable = device.dataKind { return .addressable }
        return .orderedStream
    }

    package var header: DeviceHeader {
        switch device.dataKind {
        case .addressable(let size): DeviceHeader(kind: .addressable, size: size, flags: device.migrationFlags.rawValue, spec: device.spec)
        case .orderedStream: DeviceHeader(kind: .orderedStream, size: 0, flags: device.migrationFlags.rawValue, spec: device.spec)
        }
    }

    /// save_setup: the device enters PRE_COPY (when it supports it) and dirty tracking starts.
    package func saveSetup() throws(DeviceError) {
        if supportsPrecopy { try device.setState(.preCopy) }
    }

    /// state_pending_estimate: a cheap estimate (dirty bytes as the device counts them, or its
    /// pre-copy info), without the gap-closing of a real plan.
    package func pendingEstimate() throws(DeviceError) -> (precopy: UInt64, stopCopyOnly: UInt64) {
        if !supportsPrecopy { return (0, try device.stopCopySize()) }
        if let a = device as? any AddressableDevice { return (a.dirtyByteCount(), 0) }
        let info = try device.precopyInfo()
        return (info.initialBytes + info.dirtyBytes, 0)
    }

    /// state_pending_exact: (bytes the next round would send, bytes only stop-copy can move, and
    /// about how many extents the next round's frames would carry: the runs of adjacent dirty
    /// chunks plus one per frame, as a frame boundary splits a run; 0 for a stream).
    /// For addressable devices it reads a copy of the dirty bitmap, without taking it.
    package func pending(chunkSize: Int) throws(DeviceError) -> (precopy: UInt64, stopCopyOnly: UInt64, extents: UInt64) {
        if !supportsPrecopy { return (0, try device.stopCopySize(), 0) }
        if let a = device as? any AddressableDevice {
            // Exactly what the next plan would send: the dirty chunks, nothing between them.
            chunks.removeAll(keepingCapacity: true)
            try a.peekDirtyChunks(into: &chunks)
            let bytes = Self.bytes(of: chunks, trackingChunk: UInt64(a.trackingChunkSize), size: a.size)
            return (bytes, 0, Self.runs(of: chunks) + bytes / UInt64(max(chunkSize, 1)))
        }
        let info = try device.precopyInfo()
        return (info.initialBytes + info.dirtyBytes, 0, 0)
    }

    /// Runs of consecutive indices in ascending tracking chunk indices (as the bitmap yields them).
    static func runs(of chunks: [UInt64]) -> UInt64 {
        var n: UInt64 = 0
        var last: UInt64?
        for c in chunks {
            if last.map({ c != $0 + 1 }) ?? true { n += 1 }
            last = c
        }
        return n
    }

    /// Plans one round (save_live_iterate, or the stop-copy round): the dirty ranges of an
    /// addressable device, split into chunks; a drain of a stream device.
    package func plan(chunkSize: Int, into plan: inout RoundPlanItems) throws(DeviceError) {
        if let a = device as? any AddressableDevice {
            chunks.removeAll(keepingCapacity: true)
            try a.takeDirtyChunks(into: &chunks)
            chunks.sort()
            let track = UInt64(a.trackingChunkSize)
            plan.harvestedBytes += Self.bytes(of: chunks, trackingChunk: track, size: a.size)
            Self.frames(chunks, device: id, trackingChunk: track, size: a.size, chunkSize: chunkSize, into: &plan)
        } else {
            streamLock.withLock { streamEnded = false }
            plan.items.append(.drain(device: id))
        }
    }

    /// Dirty bytes of sorted-or-not tracking chunk indices (the last chunk clipped to `size`).
    static func bytes(of chunks: [UInt64], trackingChunk track: UInt64, size: UInt64) -> UInt64 {
        chunks.reduce(0) { total, c in
            let off = c * track
            return off >= size ? total : total + min(track, size - off)
        }
    }

    /// Turns sorted dirty tracking chunks into `pages` frames: runs of adjacent chunks become
    /// extents (never joined across a clean gap), and consecutive extents fill a frame until its
    /// table plus bytes would pass `chunkSize` (an extent longer than a frame is split).
    static func frames(_ chunks: [UInt64], device id: Int, trackingChunk track: UInt64, size: UInt64, chunkSize: Int,
                       into plan: inout RoundPlanItems) {
        var frameStart = plan.extents.count, frameBytes = 0
        func closeFrame() {
            if plan.extents.count > frameStart { plan.items.append(.pages(device: id, extents: frameStart..<plan.extents.count)) }
            frameStart = plan.extents.count
            frameBytes = 0
        }
        /// Adds `[start, end)`, splitting it across frames as room allows.
        func add(_ start: UInt64, _ end: UInt64) {
            var off = start
            while off < end {
                let count = plan.extents.count - frameStart
                var room = chunkSize - ExtentTable.size(count: count + 1) - frameBytes
                if room <= 0 || count == ExtentTable.maxExtents { closeFrame(); room = chunkSize - ExtentTable.size(count: 1) }
                let n = Int(min(UInt64(room), end - off))
                plan.extents.append(Extent(offset: off, length: n))
                frameBytes += n
                off += UInt64(n)
            }
        }
        var runStart: UInt64 = 0, runEnd: UInt64 = 0  // byte range [runStart, runEnd)
        for c in chunks {
            let off = c * track
            guard off < size else { continue }
            let end = min(off + track, size)
            if runEnd > runStart && off == runEnd {
                runEnd = end
            } else {
                if runEnd > runStart { add(runStart, runEnd) }
                runStart = off
                runEnd = end
            }
        }
        if runEnd > runStart { add(runStart, runEnd) }
        closeFrame()
    }

    /// complete_precopy, first half: the device stops (STOP_COPY). Returns how long it took.
    package func enterStopCopy() throws(DeviceError) -> Duration {
        let t0 = Monotonic.now
        try device.setState(.stopCopy)
        return Monotonic.now - t0
    }

    /// Takes the device's save fd for the round about to be sent: only a device in a saving
    /// state has data this round (a device without pre-copy waits in RUNNING until stop-copy).
    package func beginRound() throws(DeviceError) {
        roundFD = -1
        guard let a = device as? any AddressableDevice, VFIOStateMachine.isSaving(device.state) else { return }
        roundFD = try a.dataFD(for: .save)
        roundPath = FileIOPath.forFile(roundFD)
    }

    /// Reads `extents` of an addressable device back to back into `buffer` from `start` (a
    /// channel's registered slot `slot` of `ring`), for the round `beginRound` opened: a `pages`
    /// frame's gather. The reads go to the kernel in batches (`Ring.readBatch`), not one
    /// submit-and-wait per extent. Returns the bytes read (the extents' total).
    package func read(extents: ArraySlice<Extent>, into buffer: UnsafeMutableRawBufferPointer, from start: Int, ring: Ring,
                     slot: Int?) throws(DeviceError) -> Int {
        guard roundFD >= 0 else {
            throw DeviceError(.invalidState, "device \(id) (\(device.spec)) has no data to read in state \(device.state)")
        }
        var at = start
        let short: (index: Int, got: Int)?
        do {
            short = try ring.readBatch(fd: roundFD, count: extents.count, slot: slot, path: roundPath) { i in
                let e = extents[extents.startIndex + i]
                defer { at += e.length }
                return (UnsafeMutableRawBufferPointer(rebasing: buffer[at..<(at + e.length)]), e.offset)
            }
        } catch {
            throw DeviceError(.io, "reading device \(id) (\(device.spec)) failed: \(error) (a pages frame of \(extents.count) extents from \(extents.first?.offset ?? 0))")
        }
        if let short {
            let e = extents[extents.startIndex + short.index]
            throw DeviceError(.io, "device \(id) (\(device.spec)) returned \(short.got) of \(e.length) bytes at \(e.offset)")
        }
        return at - start
    }

    /// Reads the next piece of a stream device into `buffer`, with its sequence number; nil
    /// when the device has nothing now (pre-copy) or its stream ended (stop-copy).
    package func readStream(into buffer: UnsafeMutableRawBufferPointer) throws(DeviceError) -> (seq: UInt64, count: Int)? {
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
    package func cleanup(success: Bool) throws(DeviceError) {
        if success {
            if device.state != .stop { try device.setState(.stop) }
        } else if device.state != .running {
            try device.setState(.running)
        }
    }
}

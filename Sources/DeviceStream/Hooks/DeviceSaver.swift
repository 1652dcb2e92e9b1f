import Glibc
import DSWire
import DSDevices
import DSTransport
import DSRing
import DSSupport

/// One unit of migration data a channel thread reads and sends.
package enum SaveItem: Sendable, Equatable {
    /// `length` bytes of an addressable device at `offset`.
    case range(device: Int, offset: UInt64, length: Int)
    /// Read the stream device until it has no data now (pre-copy) or ends (stop-copy).
    case drain(device: Int)
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
    /// The device's save fd for the round being sent (-1: not in a saving state, no data).
    /// Set by `beginRound` before the channels start, read by them during the round.
    private var roundFD: Int32 = -1
    /// The largest run of clean bytes a round sends to join two dirty runs into one frame.
    static let maxGap: UInt64 = 64 << 10

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

    /// state_pending_exact: (bytes the next round would send, bytes only stop-copy can move).
    /// For addressable devices it plans the round on a copy of the dirty bitmap, gaps closed.
    package func pending(chunkSize: Int) throws(DeviceError) -> (precopy: UInt64, stopCopyOnly: UInt64) {
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
    package func plan(chunkSize: Int, into items: inout [SaveItem]) throws(DeviceError) {
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
    }

    /// Reads the `length` bytes at `offset` of an addressable device into `buffer` (a channel's
    /// registered slot `slot` of `ring`), for the round `beginRound` opened.
    package func read(offset: UInt64, length: Int, into buffer: UnsafeMutableRawBufferPointer, ring: Ring,
                     slot: Int?) throws(DeviceError) {
        guard roundFD >= 0 else {
            throw DeviceError(.invalidState, "device \(id) (\(device.spec)) has no data to read in state \(device.state)")
        }
        let n: Int
        do { n = try ring.readFully(fd: roundFD, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length]), offset: offset, slot: slot) } catch {
            throw DeviceError(.io, "reading device \(id) (\(device.spec)) at \(offset) failed: \(error)")
        }
        guard n == length else { throw DeviceError(.io, "device \(id) (\(device.spec)) returned \(n) of \(length) bytes at \(offset)") }
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

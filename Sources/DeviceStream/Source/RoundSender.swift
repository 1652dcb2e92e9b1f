import Synchronization
import DSSupport
import DSWire
import DSTransport
import DSDevices

/// Paces pre-copy to a rate (`--max-bandwidth`) across channels: one shared token schedule.
final class Pacer: Sendable {
    let rate: Double
    let start: Duration
    let sent = Atomic<UInt64>(0)
    init(rate: UInt64) { self.rate = Double(rate); start = Monotonic.now }
    func account(_ bytes: Int) {
        let total = sent.add(UInt64(bytes), ordering: .relaxed).newValue
        let due = start + .nanoseconds(Int64(Double(total) / rate * 1e9))
        let now = Monotonic.now
        if due > now { sleep(for: due - now) }
    }
}

/// Per-device, per-channel counts of chunks and bytes sent.
final class SentCounters: Sendable {
    let chunks: Mutex<[[UInt64]]>
    let bytes: Mutex<[UInt64]>
    init(devices: Int, channels: Int) {
        chunks = Mutex([[UInt64]](repeating: [UInt64](repeating: 0, count: channels), count: devices))
        bytes = Mutex([UInt64](repeating: 0, count: devices))
    }
    func add(device: Int, channel: Int, bytes n: Int) {
        chunks.withLock { $0[device][channel] += 1 }
        bytes.withLock { $0[device] += UInt64(n) }
    }
    func totals(device: Int) -> DeviceTotals {
        DeviceTotals(chunksPerChannel: chunks.withLock { $0[device] }, bytes: bytes.withLock { $0[device] }, digest: nil)
    }
}

/// The data plane of one round: every channel thread claims ranges from a shared cursor,
/// has the device's saver read each into the channel's registered slot, and sends it; then it
/// drains the stream devices; then it marks the round's end. The session never touches device
/// bytes itself (reads live in `DeviceSaver`).
struct RoundSender {
    let group: WorkerGroup<Channel>
    let savers: [DeviceSaver]
    let counters: SentCounters
    let progress: TransferProgress

    /// Sends the plan's `pages` frames and drains `streams`; returns device bytes and wire bytes.
    func send(_ plan: RoundPlanItems, streams: [DeviceSaver], flags: FrameFlags, iteration: Int,
              pacer: Pacer?) throws(TransferError) -> (bytes: UInt64, wire: UInt64) {
        let items = plan.items, extents = plan.extents
        for s in savers {
            do throws(DeviceError) { try s.beginRound() } catch { throw TransferError(.device, error.message) }
        }
        let cursor = Atomic<Int>(0)
        let totals = Mutex<(UInt64, UInt64)>((0, 0))
        try group.run { [self] (i, ch) throws(TransferError) in
            let wire0 = ch.stats.wireBytes
            var bytes: UInt64 = 0
            while true {
                let k = cursor.add(1, ordering: .relaxed).oldValue
                guard k < items.count else { break }
                guard case .pages(let d, let range) = items[k] else { continue }
                let length = try gather(extents[range], device: d, into: ch)
                pacer?.account(length)
                try ch.sendChunk(type: .pages, stream: UInt16(d), position: 0, length: ExtentTable.size(count: range.count) + length,
                                 digestIndex: 0, flags: flags, aux: UInt32(iteration))
                account(device: d, channel: i, bytes: length, into: &bytes)
            }
            for s in streams { try drain(s, channel: i, ch, flags: flags, iteration: iteration, pacer: pacer, bytes: &bytes) }
            // Every channel marks the round's end: a keepalive for channels that had no data.
            try ch.sendControl(.iterationMark, aux: UInt32(iteration))
            let w = ch.stats.wireBytes - wire0
            totals.withLock { $0.0 += bytes; $0.1 += w }
        }
        return totals.withLock { $0 }
    }

    /// Writes the extent table at the front of the channel's read slot and has the device's saver
    /// read the extents right behind it (one registered slot, no copy; the reads batched, see
    /// `DeviceSaver.read(extents:)`); returns the page bytes.
    private func gather(_ extents: ArraySlice<Extent>, device d: Int, into ch: Channel) throws(TransferError) -> Int {
        let buffer = ch.readBuffer
        ExtentTable.writeHeader(count: extents.count, into: buffer)
        for (i, e) in extents.enumerated() {
            ExtentTable.writeEntry(i, offset: e.offset, length: UInt32(e.length), into: buffer)
        }
        do throws(DeviceError) {
            return try savers[d].read(extents: extents, into: buffer, from: ExtentTable.size(count: extents.count),
                                      ring: ch.ring, slot: ch.inSlot)
        } catch { throw TransferError(.device, error.message, cause: error) }
    }

    /// Reads a stream device until it has nothing now (pre-copy) or ends (stop-copy).
    private func drain(_ s: DeviceSaver, channel i: Int, _ ch: Channel, flags: FrameFlags, iteration: Int, pacer: Pacer?,
                       bytes: inout UInt64) throws(TransferError) {
        while true {
            let piece: (seq: UInt64, count: Int)?
            do { piece = try s.readStream(into: ch.readBuffer) } catch {
                throw TransferError(.device, "reading device \(s.id) (\(s.device.spec)) failed: \(error)")
            }
            guard let piece else { return }
            pacer?.account(piece.count)
            try ch.sendChunk(type: .streamData, stream: UInt16(s.id), position: piece.seq, length: piece.count,
                             digestIndex: 0, flags: flags, aux: UInt32(iteration))
            account(device: s.id, channel: i, bytes: piece.count, into: &bytes)
        }
    }

    private func account(device d: Int, channel i: Int, bytes n: Int, into total: inout UInt64) {
        counters.add(device: d, channel: i, bytes: n)
        progress.add(bytes: UInt64(n), wire: 0)
        total += UInt64(n)
    }
}

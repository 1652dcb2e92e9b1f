import Synchronization
import DSSupport
import DSWire
import DSTransport
import DSDevices

/// The destination's state while it loads a migration: what arrived per device, the acks it
/// sent, and the current round's load rate, with one method per frame type. Every channel
/// thread calls `handle` for the frames it receives; channel-0-only frames are refused on other
/// channels.
final class LoadState: Sendable {
    /// What the frames so far have told us, under one lock.
    struct Fields {
        /// A device's initial-data counts (`initDataSent`), until it is acknowledged.
        var pendingInit: [Int: [UInt64]] = [:]
        /// Devices whose switchover-ack went out.
        var acked: Set<Int> = []
        /// Each device's `endOfState` totals.
        var endOfState: [Int: DeviceTotals] = [:]
        /// Devices whose config state arrived and was loaded.
        var configs: Set<Int> = []
        /// Bytes loaded at the last round mark, and when this round's first chunk arrived: the
        /// load rate per round is the bytes between marks over the time from the first chunk to
        /// the mark (idle gaps between rounds do not count).
        var roundStartBytes: UInt64 = 0
        var roundFirstData: Duration?
    }

    let loaders: [DeviceLoader]
    let channels: Int
    let replies: ControlReplies
    let barrier: RoundBarrier
    let abort: AbortSignal
    let timeout: Duration
    let progress: TransferProgress
    let control: SessionControl
    let emit: @Sendable (MigrationEvent) -> Void
    private let fields = Mutex(Fields())

    init(loaders: [DeviceLoader], channels: Int, replies: ControlReplies, abort: AbortSignal, timeout: Duration,
         progress: TransferProgress, control: SessionControl, emit: @escaping @Sendable (MigrationEvent) -> Void) {
        self.loaders = loaders
        self.channels = channels
        self.replies = replies
        self.progress = progress
        self.control = control
        self.emit = emit
        self.abort = abort
        self.timeout = timeout
        barrier = RoundBarrier(channels: channels)
        abort.onAbort { [barrier] in barrier.wake() }
        for l in loaders { abort.onAbort { l.wake() } }
    }

    /// Handles one frame on channel `i`; returns true when the channel ended (`channelEnd`).
    func handle(_ f: ReceivedFrame, channel i: Int, _ ch: Channel) throws(TransferError) -> Bool {
        let h = f.header
        let d = Int(h.stream)
        if [.pages, .streamData, .initDataSent, .configState, .endOfState].contains(h.type) {
            guard d < loaders.count else { throw TransferError(.protocolViolation, "frame for unknown device \(d)") }
        }
        switch (h.type, i) {
        case (.pages, _): try pages(f, device: d, channel: i, ch)
        case (.streamData, _): try streamData(f, device: d, channel: i)
        case (.iterationMark, _): try iterationMark(round: h.aux, channel: i)
        case (.initDataSent, 0): try initDataSent(f, device: d)
        case (.switchover, 0): break
        case (.ping, 0): try replies.send(.pong, position: h.position)
        case (.configState, 0): try configState(f, device: d)
        case (.endOfState, 0): try endOfState(f, device: d)
        case (.channelEnd, _): try channelEnd(f, channel: i, ch); return true
        default: throw Channel.unexpected(f, expecting: "migration data", channel: i)
        }
        if h.type.isData { ch.stats.chunks += 1; ch.stats.rawBytes += UInt64(h.rawLength) }
        return false
    }

    private func pages(_ f: ReceivedFrame, device d: Int, channel i: Int, _ ch: Channel) throws(TransferError) {
        noteData()
        let n = try loaders[d].loadPages(f.bytes, channel: i, ring: ch.ring, slot: f.slot)
        progress.add(bytes: UInt64(n), wire: 0)
        try checkAck(d)
    }

    private func streamData(_ f: ReceivedFrame, device d: Int, channel i: Int) throws(TransferError) {
        noteData()
        try loaders[d].loadStream(f.bytes, seq: f.header.position, channel: i, timeout: timeout, abort: abort)
        progress.add(bytes: UInt64(f.bytes.count), wire: 0)
        try checkAck(d)
    }

    private func noteData() { fields.withLock { if $0.roundFirstData == nil { $0.roundFirstData = Monotonic.now } } }

    /// No channel reads round k+1 until every channel has loaded round k: a page sent again in a
    /// later round (on another channel) must land after its older copy, never under it. Channel 0
    /// then reports the round loaded, with its load rate, for every round, rate or not: the
    /// source ends its round on it.
    private func iterationMark(round: UInt32, channel i: Int) throws(TransferError) {
        try barrier.arrive(round: round, abort: abort, timeout: timeout)
        guard i == 0 else { return }
        let loaded = loadedBytes
        let now = Monotonic.now
        let rate = fields.withLock { s -> Double? in
            defer { s.roundStartBytes = loaded; s.roundFirstData = nil }
            guard let first = s.roundFirstData, loaded - s.roundStartBytes >= 1 << 20 else { return nil }
            return Double(loaded - s.roundStartBytes) / max((now - first).seconds, 1e-6)
        }
        try replies.send(.loadStats, aux: round, payload: LoadStats(loadedBytes: Double(loaded), bytesPerSecond: rate ?? 0).encoded())
        let perDevice = loaders.map(\.loadedBytes)
        control.update { $0.iterations = Int(round); $0.deviceBytes = perDevice }
        emit(.roundLoaded(round: Int(round), loadedBytes: loaded))
    }

    private func initDataSent(_ f: ReceivedFrame, device d: Int) throws(TransferError) {
        let t = try totals(f, "init-data-sent")
        fields.withLock { $0.pendingInit[d] = t.chunksPerChannel }
        try checkAck(d)
    }

    /// Sends a device's switchover-ack once its initial data is loaded on every channel.
    private func checkAck(_ d: Int) throws(TransferError) {
        let due = fields.withLock { s -> Bool in
            guard let counts = s.pendingInit[d], !s.acked.contains(d), loaders[d].hasLoaded(counts) else { return false }
            return s.acked.insert(d).inserted
        }
        if due { try replies.send(.switchoverAck, stream: UInt16(d)) }
    }

    private func configState(_ f: ReceivedFrame, device d: Int) throws(TransferError) {
        do { try loaders[d].device.loadConfig(f.control) } catch {
            throw TransferError(.device, "device \(d) refused its config state: \(error)")
        }
        fields.withLock { _ = $0.configs.insert(d) }
    }

    private func endOfState(_ f: ReceivedFrame, device d: Int) throws(TransferError) {
        let t = try totals(f, "end of state")
        fields.withLock { $0.endOfState[d] = t }
    }

    private func channelEnd(_ f: ReceivedFrame, channel i: Int, _ ch: Channel) throws(TransferError) {
        let end: ChannelEnd
        do { end = try ChannelEnd.decode(f.control) } catch {
            throw TransferError(.protocolViolation, "malformed channel end: \(error)")
        }
        guard end.chunks == ch.stats.chunks, end.rawBytes == ch.stats.rawBytes else {
            throw TransferError(.corruption, "channel \(i) ended with \(ch.stats.chunks) chunks received but \(end.chunks) sent")
        }
    }

    private func totals(_ f: ReceivedFrame, _ what: String) throws(TransferError) -> DeviceTotals {
        do { return try DeviceTotals.decode(f.control, channels: channels) } catch {
            throw TransferError(.protocolViolation, "malformed \(what): \(error)")
        }
    }

    var loadedBytes: UInt64 { loaders.reduce(0) { $0 + $1.loadedBytes } }

    /// Every device's end of state must match what was loaded, chunk for chunk, per channel,
    /// and its config state must have arrived.
    func verifyComplete() throws(TransferError) {
        let s = fields.withLock { $0 }
        for l in loaders {
            guard let t = s.endOfState[l.id] else { throw TransferError(.corruption, "device \(l.id): the stream ended without its end-of-state") }
            guard l.loadedPerChannel == t.chunksPerChannel, l.loadedBytes == t.bytes else {
                throw TransferError(.corruption, "device \(l.id): loaded \(l.loadedBytes) bytes in \(l.loadedPerChannel) chunks per channel, but the source sent \(t.bytes) in \(t.chunksPerChannel)")
            }
            guard s.configs.contains(l.id) else { throw TransferError(.corruption, "device \(l.id): no config state arrived") }
        }
    }
}

import Glibc
import DSWire
import DSDevices
import DSTransport
import DSRing
import DSSupport

/// The load hooks of one device on the destination: `loadSetup` (RESUMING), `loadState`
/// (chunks, config, end of state), `loadCleanup` (STOP → RUNNING, or left not running).
package final class DeviceLoader: @unchecked Sendable {
    // @unchecked: the device is thread-safe by protocol; `lock` guards the stream turnstile and
    // the counters.
    package let id: Int
    package let device: any MigratableDevice
    package let header: DeviceHeader
    private let lock = ConditionLock()
    private var nextSequence: UInt64 = 0
    private(set) var loadedPerChannel: [UInt64]
    private(set) var bytesLoaded: UInt64 = 0
    private var fd: Int32 = -1
    /// The channels' writes into the load fd: inline for a memfd or tmpfs file (io_uring would
    /// punt each to a worker thread), one at a time (`SharedFileWriter`).
    private var writer: SharedFileWriter?

    /// load_setup: checks the source's header against the local device and takes the
    /// device's load fd (it must be in RESUMING).
    package init(id: Int, device: any MigratableDevice, header: DeviceHeader, channels: Int) throws(DeviceError) {
        self.id = id
        self.device = device
        self.header = header
        loadedPerChannel = [UInt64](repeating: 0, count: channels)
        switch device.dataKind {
        case .addressable(let size):
            guard header.kind == .addressable else { throw DeviceError(.unsupported, "device \(id): the source sends an ordered stream (\(header.spec)) but \(device.spec) is addressable") }
            guard header.size == size else { throw DeviceError(.unsupported, "device \(id): the source's \(header.spec) has \(header.size) bytes, the destination's \(device.spec) has \(size)") }
            fd = try (device as! any AddressableDevice).dataFD(for: .load)
            writer = SharedFileWriter(fd: fd)
        case .orderedStream:
            guard header.kind == .orderedStream else { throw DeviceError(.unsupported, "device \(id): the source sends addressable state (\(header.spec)) but \(device.spec) takes an ordered stream") }
            guard device.state == .resuming else { throw DeviceError(.invalidState, "device \(id) (\(device.spec)) is not in RESUMING") }
        }
    }

    /// Writes `bytes` at `offset` of the load fd: through the ring, or inline one writer at a time.
    private func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, ring: Ring, slot: Int) -> Errno? {
        guard let writer else { return Errno(rawValue: EBADF) }
        return writer.write(bytes, at: offset, ring: ring, slot: slot)
    }

    /// load_state for a chunk of addressable state.
    package func load(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, channel: Int, ring: Ring, slot: Int) throws(TransferError) {
        guard header.kind == .addressable else { throw TransferError(.protocolViolation, "addressable data for stream device \(id)") }
        guard offset <= header.size, UInt64(bytes.count) <= header.size - offset else {
            throw TransferError(.protocolViolation, "chunk at \(offset)+\(bytes.count) outside device \(id)'s \(header.size) bytes")
        }
        if let e = write(bytes, at: offset, ring: ring, slot: slot) {
            throw TransferError(.device, "writing device \(id) (\(device.spec)) at \(offset) failed: \(e)")
        }
        lock.withLock { loadedPerChannel[channel] += 1; bytesLoaded += UInt64(bytes.count) }
    }

    /// load_state for a `pages` frame: checks its extent table against the device (in bounds,
    /// sorted, not overlapping, adding up) before writing anything, then scatters each extent
    /// to its offset straight from the channel's registered slot. Returns the page bytes.
    package func loadPages(_ payload: UnsafeRawBufferPointer, channel: Int, ring: Ring, slot: Int) throws(TransferError) -> Int {
        guard header.kind == .addressable else { throw TransferError(.protocolViolation, "pages for stream device \(id)") }
        let table: ExtentTable.View
        do { table = try ExtentTable.parse(payload, deviceSize: header.size) } catch {
            throw TransferError(.protocolViolation, "device \(id): a pages frame was refused: \(error)")
        }
        // The extents go to the kernel together (one submission for many isolated pages), not
        // one write and one wait each; on shmem they are plain pwrites, one lock for the frame.
        guard let writer else { throw TransferError(.device, "writing device \(id) (\(device.spec)): it has no load fd") }
        if let e = writer.writeScattered(ring: ring, slot: slot, { add in table.forEach { offset, bytes in add(bytes, offset) } }) {
            throw TransferError(.device, "writing device \(id) (\(device.spec)) for a pages frame of \(table.count) extents failed: \(e)")
        }
        lock.withLock { loadedPerChannel[channel] += 1; bytesLoaded += UInt64(table.dataBytes) }
        return table.dataBytes
    }

    /// load_state for a piece of an ordered stream: waits for its turn (bounded by `timeout`,
    /// ended early by `abort`), then writes it to the device in order.
    package func loadStream(_ bytes: UnsafeRawBufferPointer, seq: UInt64, channel: Int, timeout: Duration,
                           abort: AbortSignal) throws(TransferError) {
        guard header.kind == .orderedStream, let s = device as? any StreamDevice else {
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

    package func wake() { lock.withLock { lock.broadcast() } }

    /// Whether every channel has loaded at least `counts` chunks of this device.
    package func hasLoaded(_ counts: [UInt64]) -> Bool {
        lock.withLock { zip(loadedPerChannel, counts).allSatisfy { $0 >= $1 } && loadedPerChannel.count == counts.count }
    }

    package var loadedBytes: UInt64 { lock.withLock { bytesLoaded } }

    /// load_cleanup, first phase: RESUMING → STOP. The device validates what it got; it does
    /// not run yet.
    package func validate() throws(DeviceError) {
        if device.state != .stop { try device.setState(.stop) }
    }

    /// load_cleanup, second phase (after the source's commit): STOP → RUNNING.
    package func run() throws(DeviceError) {
        try device.setState(.running)
    }

    /// Both phases at once, for a caller with no source to wait for (tests, local restores).
    package func resume() throws(DeviceError) {
        try validate()
        try run()
    }
}

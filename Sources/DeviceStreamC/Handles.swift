import Glibc
import CDeviceStream
import DeviceStream
import DSSupport
import DSTransport
import DSDevices

// The objects behind the opaque handles. A handle is an `Unmanaged` retain of one of these
// classes; `*_free` releases it, exactly once. Nothing here is visible to C but the pointer.

/// `ds_error`: a code, a message and a hint, with C strings the handle owns.
final class ErrorBox {
    let code: Int32
    let message: UnsafeMutablePointer<CChar>
    let hint: UnsafeMutablePointer<CChar>?
    init(code: Int32, message: String, hint: String?) {
        self.code = code
        self.message = strdup(message)
        self.hint = hint.map { strdup($0) }
    }
    deinit { free(message); free(hint) }

    convenience init(_ e: TransferError) {
        self.init(code: Self.code(e.code), message: e.message, hint: e.hint)
    }

    static func code(_ c: TransferError.Code) -> Int32 {
        switch c {
        case .connect: DS_ERR_CONNECT
        case .peerClosed: DS_ERR_PEER_CLOSED
        case .protocolViolation: DS_ERR_PROTOCOL
        case .corruption: DS_ERR_CORRUPTION
        case .timeout: DS_ERR_TIMEOUT
        case .localIO: DS_ERR_LOCAL_IO
        case .rejected: DS_ERR_REJECTED
        case .remote: DS_ERR_REMOTE
        case .usage: DS_ERR_USAGE
        case .device: DS_ERR_DEVICE
        case .aborted: DS_ERR_ABORTED
        case .cancelled: DS_ERR_CANCELLED
        }
    }
}

/// Stores an error for the caller when it asked for one (`err` not NULL).
func fail(_ err: UnsafeMutablePointer<OpaquePointer?>?, _ code: Int32, _ message: String, hint: String? = nil) {
    guard let err else { return }
    err.pointee = OpaquePointer(Unmanaged.passRetained(ErrorBox(code: code, message: message, hint: hint)).toOpaque())
}

func fail(_ err: UnsafeMutablePointer<OpaquePointer?>?, _ e: TransferError) {
    guard let err else { return }
    err.pointee = OpaquePointer(Unmanaged.passRetained(ErrorBox(e)).toOpaque())
}

func fail(_ err: UnsafeMutablePointer<OpaquePointer?>?, _ e: DeviceError) {
    fail(err, DS_ERR_DEVICE, e.message)
}

/// `ds_options`: a migration configuration and the destination's resume hold.
final class OptionsBox {
    var configuration = MigrationConfiguration()
    var resumeHold: Duration?
    init() {}
    init(copying other: OptionsBox) { configuration = other.configuration; resumeHold = other.resumeHold }
}

/// `ds_device`: a device the library made from a spec, or one over the VMM's callbacks.
final class DeviceBox {
    let device: any MigratableDevice
    init(_ device: any MigratableDevice) { self.device = device }
    deinit { device.close() }
}

/// The caller's event callback and its `user` pointer.
struct EventSink: @unchecked Sendable {
    // @unchecked: the pointer is the caller's; the header makes calling it from library threads
    // the contract.
    let fn: ds_event_fn?
    let user: UnsafeMutableRawPointer?

    /// Warnings as DS_EVENT_WARNING events: the library never writes on the host's stderr (the
    /// Swift API's default `warn` does), and without a callback they are dropped.
    var warn: @Sendable (String) -> Void { { [self] in send(.warning($0)) } }

    func send(_ event: MigrationEvent) {
        guard let fn else { return }
        var e = ds_event()
        e.struct_size = UInt32(MemoryLayout<ds_event>.size)
        e.predicted_downtime_ns = -1
        e.duration_ns = -1
        var text: String?
        switch event {
        case .setupDone(let d): e.kind = UInt32(DS_EVENT_SETUP_DONE); e.duration_ns = nanos(d)
        case .iteration(let r):
            e.kind = UInt32(DS_EVENT_ITERATION); e.iteration = UInt64(r.iteration); e.bytes = r.sentBytes
            e.dirty_bytes = r.dirtyBytes; e.predicted_downtime_ns = r.predictedDowntime.map(nanos) ?? -1; e.duration_ns = nanos(r.duration)
        case .roundLoaded(let round, let bytes): e.kind = UInt32(DS_EVENT_ROUND_LOADED); e.iteration = UInt64(round); e.bytes = bytes
        case .readyToSwitchover(let p, let reason):
            e.kind = UInt32(DS_EVENT_READY_TO_SWITCHOVER); e.predicted_downtime_ns = p.map(nanos) ?? -1; e.reason = reasonCode(reason)
        case .switchover(let p, let reason):
            e.kind = UInt32(DS_EVENT_SWITCHOVER); e.predicted_downtime_ns = p.map(nanos) ?? -1; e.reason = reasonCode(reason)
        case .handover(let phase): e.kind = UInt32(DS_EVENT_HANDOVER); e.phase = phaseCode(phase)
        case .deviceProgress(let device, let bytes): e.kind = UInt32(DS_EVENT_DEVICE_PROGRESS); e.device = UInt32(device); e.bytes = bytes
        case .warning(let w): e.kind = UInt32(DS_EVENT_WARNING); text = w
        }
        if let text {
            text.withCString { p in e.text = p; withUnsafePointer(to: &e) { fn($0, user) } }
        } else {
            withUnsafePointer(to: &e) { fn($0, user) }
        }
    }
}

func nanos(_ d: Duration) -> Int64 {
    let (s, atto) = d.components
    let (m, o) = s.multipliedReportingOverflow(by: 1_000_000_000)
    return o ? Int64.max : m &+ atto / 1_000_000_000
}

func reasonCode(_ r: SwitchoverReason?) -> UInt32 {
    switch r {
    case nil: UInt32(DS_REASON_NONE)
    case .converged: UInt32(DS_REASON_CONVERGED)
    case .nothingToSend: UInt32(DS_REASON_NOTHING_TO_SEND)
    case .nonConvergencePolicy: UInt32(DS_REASON_NONCONVERGENCE)
    case .deadlineReached: UInt32(DS_REASON_DEADLINE)
    case .noPrecopy: UInt32(DS_REASON_NO_PRECOPY)
    case .requested: UInt32(DS_REASON_REQUESTED)
    }
}

func phaseCode(_ p: HandoverPhase) -> UInt32 {
    switch p {
    case .stateSent: UInt32(DS_PHASE_STATE_SENT)
    case .loadedSent: UInt32(DS_PHASE_LOADED_SENT)
    case .loadedReceived: UInt32(DS_PHASE_LOADED_RECEIVED)
    case .commitSent: UInt32(DS_PHASE_COMMIT_SENT)
    case .commitReceived: UInt32(DS_PHASE_COMMIT_RECEIVED)
    case .running: UInt32(DS_PHASE_RUNNING)
    case .resumedReceived: UInt32(DS_PHASE_RESUMED_RECEIVED)
    }
}

func sessionCode(_ p: MigrationPhase) -> UInt32 {
    switch p {
    case .idle: UInt32(DS_SESSION_IDLE)
    case .setup: UInt32(DS_SESSION_SETUP)
    case .precopy: UInt32(DS_SESSION_PRECOPY)
    case .readyToSwitchover: UInt32(DS_SESSION_READY_TO_SWITCHOVER)
    case .stopCopy: UInt32(DS_SESSION_STOP_COPY)
    case .handover: UInt32(DS_SESSION_HANDOVER)
    case .verifying: UInt32(DS_SESSION_VERIFYING)
    case .completed: UInt32(DS_SESSION_COMPLETED)
    case .failed: UInt32(DS_SESSION_FAILED)
    }
}

/// Copies `value` into the caller's struct, at most `out.struct_size` bytes of it (the size the
/// caller compiled with), keeping the caller's `struct_size`.
func fill<T>(_ out: UnsafeMutablePointer<T>, _ value: T, callerSize: UInt32) {
    var v = value
    let n = min(Int(callerSize), MemoryLayout<T>.size)
    withUnsafeBytes(of: &v) { src in
        UnsafeMutableRawPointer(out).copyMemory(from: src.baseAddress!, byteCount: n)
    }
    // struct_size is the first field of every such struct.
    UnsafeMutableRawPointer(out).storeBytes(of: callerSize, as: UInt32.self)
}

func statsValue(_ s: MigrationStatistics) -> ds_stats {
    var o = ds_stats()
    o.phase = sessionCode(s.phase)
    o.elapsed_ns = UInt64(max(nanos(s.elapsed), 0))
    o.setup_ns = s.setupTime.map(nanos) ?? -1
    o.transferred_bytes = s.transferredBytes
    o.remaining_bytes = s.remainingBytes.map { Int64(clamping: $0) } ?? -1
    o.iterations = UInt64(s.iterations)
    o.bandwidth_bytes_per_sec = s.bandwidth ?? 0
    o.expected_downtime_ns = s.expectedDowntime.map(nanos) ?? -1
    o.downtime_ns = s.downtime.map(nanos) ?? -1
    return o
}

func reportValue(_ r: MigrationReport) -> ds_report {
    var o = ds_report()
    o.completed = r.completed ? 1 : 0
    o.error_code = r.error.map { ErrorBox.code($0.code) } ?? DS_OK
    o.switchover_reason = reasonCode(r.switchoverReason)
    o.converged = r.converged.map { $0 ? 1 : 0 } ?? -1
    o.cancelled_after_commit = r.cancelledAfterCommit ? 1 : 0
    o.digests_verified = !r.devices.isEmpty && r.devices.allSatisfy { $0.sourceDigest != nil && $0.sourceDigest == $0.destinationDigest } ? 1 : 0
    o.devices = UInt32(r.devices.count)
    o.total_ns = UInt64(max(nanos(r.totalTime), 0))
    o.setup_ns = UInt64(max(nanos(r.setupTime), 0))
    o.downtime_ns = r.downtime.map(nanos) ?? -1
    o.expected_downtime_ns = r.expectedDowntime.map(nanos) ?? -1
    o.downtime_limit_ns = UInt64(max(nanos(r.downtimeLimit), 0))
    o.iterations = UInt64(r.iterations)
    o.precopy_bytes = r.precopyBytes
    o.stopcopy_bytes = r.stopcopyBytes
    o.wire_bytes = r.wireBytes
    switch r.protection {
    case .insecure: o.protection = UInt32(DS_PROTECTION_INSECURE)
    case .tlsPSK: o.protection = UInt32(DS_PROTECTION_TLS_PSK)
    case .tlsX509: o.protection = UInt32(DS_PROTECTION_TLS_X509)
    }
    return o
}

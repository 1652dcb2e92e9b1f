import DSRing
import DSWire
import DSCodec
import DSSupport

/// An error a user of a transfer or migration sees: what failed, where, and what to do.
public struct TransferError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// Could not connect (refused, unreachable, bad address).
        case connect
        /// The peer closed or reset the connection before the transfer completed.
        case peerClosed
        /// The peer sent bytes that break the protocol (bad magic, bad header, bad length).
        case protocolViolation
        /// A chunk failed its checksum or would not decode, or totals do not match.
        case corruption
        /// The peer stopped moving data for longer than the timeout.
        case timeout
        /// A local file, device or disk operation failed.
        case localIO
        /// The receiver refused this connection (another session, wrong channel).
        case rejected
        /// The peer reported an error of its own.
        case remote
        /// Bad input from the user (a path, an address, an option).
        case usage
        /// A device refused an operation (state, stream).
        case device
        /// The pre-copy scheduler gave up (non-convergence under `abort`, a deadline).
        case aborted
        /// The caller cancelled the session (`cancel()`).
        case cancelled
    }
    public var code: Code
    /// What failed and where, in words for a person; it names no CLI flag (see `hint`).
    public var message: String
    /// What to do about it, when there is something to say (a CLI may name its flags here).
    public var hint: String?
    /// The error underneath, when one caused this (a device's `DeviceError`, an `Errno`).
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, hint: String? = nil, cause: (any Error & Sendable)? = nil) {
        self.code = code; self.message = message; self.hint = hint; self.cause = cause
    }

    public var description: String { hint.map { "\(message) (\($0))" } ?? message }

    /// Wraps a ring error on a connection.
    static func network(_ e: Errno, _ doing: String, channel: Int) -> TransferError {
        switch e {
        case .timedOut: TransferError(.timeout, "\(doing) on channel \(channel): no progress within the timeout; the peer stalled or the network is down")
        case .connectionReset, .brokenPipe: TransferError(.peerClosed, "\(doing) on channel \(channel): the peer closed the connection (\(e))")
        default: TransferError(.peerClosed, "\(doing) on channel \(channel) failed: \(e)")
        }
    }

    /// A thread the session needed could not be started (`pthread_create` failed): the process
    /// or the host is out of threads or memory. Thrown, never trapped.
    package static func threadStart(_ e: Errno, _ name: String, doing: String) -> TransferError {
        TransferError(.localIO, "cannot start thread \(name) (\(doing)): pthread_create failed: \(e); the process is out of threads or memory: raise its thread limits (RLIMIT_NPROC, the cgroup's pids.max) or free memory, then retry")
    }

    /// Memory the session needed could not be allocated.
    package static func noMemory(_ e: Errno, for what: String) -> TransferError {
        TransferError(.localIO, "cannot allocate \(what): \(e); free some memory (or raise the process's memory limit), or use fewer connections or a smaller chunk size, then retry")
    }
}

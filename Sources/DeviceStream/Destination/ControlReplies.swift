import Glibc
import Synchronization
import DSSupport
import DSWire
import DSTransport

/// Destination → source frames on channel 0, sent through the connection's one send funnel
/// under a lock (they are small and rare; worker 0 keeps receiving on the same socket meanwhile).
final class ControlReplies: Sendable {
    let connection: Connection
    let lock = Mutex(())
    let timeout: Duration
    /// Frame bytes sent here (header and payload): these replies bypass the channel's counters,
    /// and `wire_bytes` counts every frame both ways at both ends (WIRE.md, "Wire bytes").
    let sentBytes = Atomic<UInt64>(0)
    init(connection: Connection, timeout: Duration) {
        self.connection = connection; self.timeout = timeout
    }

    /// Sends one frame within `timeout` (through TLS when the session has it): a source that
    /// stops reading (its socket buffer full) fails the send instead of blocking the destination
    /// forever. The connection marks the reply in flight, so an abort's farewell is not spliced
    /// into it.
    func send(_ type: FrameType, stream: UInt16 = 0, aux: UInt32 = 0, position: UInt64 = 0, payload: [UInt8] = []) throws(TransferError) {
        let bytes = controlFrame(type, stream: stream, aux: aux, position: position, payload: payload)
        let failure: ConnectionFailure? = lock.withLock { _ in
            do throws(ConnectionFailure) { try connection.send(bytes, timeout: timeout, mode: .blocking) } catch { return error }
            return nil
        }
        if failure == nil { sentBytes.add(UInt64(bytes.count), ordering: .relaxed) }
        if let failure {
            throw TransferError(.peerClosed, "sending \(type) to the source failed: \(failure.reason(peer: "the source", timeout: timeout))")
        }
    }
}

import Glibc
import Synchronization
import DSSupport
import DSWire
import DSTransport

/// Destination → source frames on channel 0, sent with plain blocking syscalls under a lock
/// (they are small and rare; worker 0 keeps receiving on the same socket meanwhile).
final class ControlReplies: Sendable {
    let fd: Int32
    let lock = Mutex(())
    /// Marks a reply in flight, so an abort's farewell frame is not spliced into it.
    let socketGuard: SocketGuard?
    let timeout: Duration
    init(fd: Int32, guard socketGuard: SocketGuard?, timeout: Duration) {
        self.fd = fd; self.socketGuard = socketGuard; self.timeout = timeout
    }

    /// Sends one frame within `timeout`: a source that stops reading (its socket buffer full)
    /// fails the send instead of blocking the destination forever.
    func send(_ type: FrameType, stream: UInt16 = 0, aux: UInt32 = 0, position: UInt64 = 0, payload: [UInt8] = []) throws(TransferError) {
        let bytes = controlFrame(type, stream: stream, aux: aux, position: position, payload: payload)
        let deadline = Monotonic.now + timeout
        let secure = SecureStream.forSocket(fd)
        let failure: String? = lock.withLock { _ in
            socketGuard?.setMidFrame(true)
            defer { socketGuard?.setMidFrame(false) }
            return bytes.withUnsafeBytes { b -> String? in
                // A TLS session: encrypted, blocking send within the timeout (no ring here).
                if let secure {
                    do { try secure.sendAll(b, ring: nil, timeout: timeout); return nil } catch { return "\(error)" }
                }
                if let e = Sockets.sendAll(fd: fd, b, deadline: deadline) {
                    return e == .timedOut ? "the source has not read its socket for \(timeout)" : "\(e)"
                }
                return nil
            }
        }
        if let failure { throw TransferError(.peerClosed, "sending \(type) to the source failed: \(failure)") }
    }
}

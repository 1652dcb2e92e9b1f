internal import COpenSSL
import Glibc
import DSRing
import DSSupport

/// One TLS 1.3 connection over a socket, with OpenSSL kept away from the socket.
///
/// OpenSSL reads and writes two buffers this object owns (a custom BIO, `ds_bio_buffers` in
/// the shim); the socket I/O is done here through the calling thread's `Ring`, in batches: one
/// `send` per frame (up to 1 MiB of records) and `recv`s of up to 256 KiB, instead of one
/// syscall per 16 KiB record (BIO_s_socket). Measured on the 2-core VM (stream-bench
/// `--compare-tls`): the cost that remains is AES-GCM itself and OpenSSL's record copies.
/// kTLS would move the record layer into the kernel, but this kernel has no `tls` ULP.
///
/// Nothing is allocated per frame: the buffers are made once per connection.
///
/// A `Connection` holds its stream (`Connection.startTLS`) and is what the rest of the code
/// hands around; the stream sends through `SocketSend`, like a plaintext connection.
///
/// Threads: one thread sends and one receives at a time (a migration's channel 0 is full
/// duplex: a worker sends while the feedback reader receives). Every use of the SSL object
/// and the buffers' bookkeeping is under `lock`; a sender holds it for the whole frame,
/// including the socket send, so records go out in the order they were made. A receiver takes
/// it only to decrypt (its socket `recv` runs outside it), and never sends.
package final class SecureStream: @unchecked Sendable {
    // @unchecked: `ssl` and `io` are touched only under `lock` (see above); the receive area
    // past `io.in_len` is written only by the one receiving thread, outside the lock.
    package let fd: Int32
    private let ssl: OpaquePointer
    private let io: UnsafeMutablePointer<ds_bio_buffers>
    /// Serializes the SSL object: a sender holds it for a whole frame.
    private let lock = ConditionLock()
    package let context: SecurityContext
    /// The session token (`SSL_export_keying_material`), derived once after the handshake.
    package private(set) var token: [UInt8] = []
    /// What `handle` and the errors call the peer.
    let peer: String
    /// Faults to inject into the socket sends (the connection's; tests).
    private let faults: FaultPlan?

    static let sendCapacity = (1 << 20) + (64 << 10)
    static let receiveCapacity = 256 << 10

    /// Failures of the stream: the socket's, or TLS's (with OpenSSL's reasons).
    package typealias Failure = ConnectionFailure

    // nonisolated(unsafe): made once (a lazy global is initialized once, thread-safely) and
    // only read afterwards; OpenSSL treats a BIO_METHOD as immutable once set up.
    nonisolated(unsafe) private static let bioMethod: OpaquePointer? = ds_bio_method_new()

    private init(fd: Int32, context: SecurityContext, peer: String, faults: FaultPlan?) throws(TransferError) {
        self.fd = fd
        self.context = context
        self.peer = peer
        self.faults = faults
        // The record buffers (1.3 MiB) first, through the allocator that throws instead of
        // trapping; nothing else is held yet if it fails.
        let out: UnsafeMutableRawPointer, into: UnsafeMutableRawPointer
        do { out = try AlignedMemory.allocate(byteCount: Self.sendCapacity, alignment: 64) } catch {
            throw TransferError(.localIO, "cannot allocate the TLS buffers for \(peer) (\(Self.sendCapacity + Self.receiveCapacity) bytes): \(error); free some memory or use fewer connections")
        }
        do { into = try AlignedMemory.allocate(byteCount: Self.receiveCapacity, alignment: 64) } catch {
            AlignedMemory.free(out)
            throw TransferError(.localIO, "cannot allocate the TLS buffers for \(peer) (\(Self.sendCapacity + Self.receiveCapacity) bytes): \(error); free some memory or use fewer connections")
        }
        guard let method = Self.bioMethod, let ssl = SSL_new(context.ctx) else {
            AlignedMemory.free(out)
            AlignedMemory.free(into)
            throw TransferError(.localIO, "cannot create a TLS connection: \(Self.openSSLErrors())")
        }
        self.ssl = ssl
        io = .allocate(capacity: 1)
        io.initialize(to: ds_bio_buffers(
            out: out.bindMemory(to: UInt8.self, capacity: Self.sendCapacity), out_len: 0, out_cap: Self.sendCapacity,
            in: into.bindMemory(to: UInt8.self, capacity: Self.receiveCapacity), in_len: 0, in_off: 0))
        guard let bio = ds_bio_new(method, io) else {
            // Every stored property is set: deinit runs and frees `ssl` and the buffers.
            throw TransferError(.localIO, "cannot create a TLS BIO: \(Self.openSSLErrors())")
        }
        SSL_set_bio(ssl, bio, bio)
        if context.isServer { SSL_set_accept_state(ssl) } else { SSL_set_connect_state(ssl) }
    }

    deinit {
        SSL_free(ssl)
        AlignedMemory.free(UnsafeMutableRawPointer(io.pointee.out))
        AlignedMemory.free(UnsafeMutableRawPointer(io.pointee.in))
        io.deallocate()
    }

    // MARK: Handshake

    /// Runs the TLS 1.3 handshake on a connected socket (client or server per `context`) and
    /// derives the session token. The stream does not own `fd` (its `Connection` does).
    /// - Parameters:
    ///   - timeout: how long the peer may stay silent during the handshake.
    ///   - faults: faults to inject into every socket send of the stream (tests).
    package static func handshake(fd: Int32, context: SecurityContext, ring: Ring, timeout: Duration,
                                  peer: String, faults: FaultPlan? = nil) throws(TransferError) -> SecureStream {
        let s = try SecureStream(fd: fd, context: context, peer: peer, faults: faults)
        try s.runHandshake(ring: ring, timeout: timeout)
        return s
    }

    private func runHandshake(ring: Ring, timeout: Duration) throws(TransferError) {
        let what = "the TLS handshake with \(peer)"
        while true {
            ERR_clear_error()
            let rc = SSL_do_handshake(ssl)
            let err = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl, rc)
            let reasons = rc == 1 ? "" : describe(err)
            // Whatever SSL made (a flight, an alert) goes out first.
            if io.pointee.out_len > 0 {
                do { try flushLocked(ring: ring, timeout: timeout) } catch {
                    if rc == 1 || err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE { throw handshakeFailure(error, what, timeout) }
                }
            }
            if rc == 1 { break }
            switch err {
            case SSL_ERROR_WANT_READ:
                let n: Int
                do { n = try fill(ring: ring, timeout: timeout) } catch { throw handshakeFailure(error, what, timeout) }
                if n == 0 {
                    throw TransferError(.peerClosed, "\(what) failed: the peer closed the connection during the handshake (it refused our credentials, or it is not a TLS devstream peer): \(context.isServer ? "give the sender" : "check that the receiver has") the same pre-shared key, or certificates from the same CA",
                                        hint: "the same --psk-file, or certificates from the same --tls-ca, at both ends")
                }
            case SSL_ERROR_WANT_WRITE:
                continue
            default:
                if context.isServer && startsWithPlaintextPreamble {
                    throw TransferError(.rejected, "the sender at \(peer) is not using TLS (a plaintext devstream sender); this receiver requires TLS: give the sender the same pre-shared key or certificates",
                                        hint: "give the sender the same --psk-file or --tls-* options")
                }
                let (why, hint) = context.explain(reasons)
                throw TransferError(.rejected, "\(what) failed: \(why) (\(reasons))", hint: hint)
            }
        }
        if case .psk = context.options.mode, SSL_session_reused(ssl) != 1 {
            throw TransferError(.rejected, "\(what) did not use the pre-shared key; refusing the session: both ends need the same key",
                                hint: "give both ends the same --psk-file")
        }
        var out = [UInt8](repeating: 0, count: SecurityContext.tokenLength)
        let label = SecurityContext.sessionLabel
        let ok = out.withUnsafeMutableBytes { o in
            SSL_export_keying_material(ssl, o.baseAddress!.assumingMemoryBound(to: UInt8.self), o.count, label, label.utf8.count, nil, 0, 0)
        }
        guard ok == 1 else { throw TransferError(.localIO, "cannot derive the TLS session token: \(Self.openSSLErrors())") }
        token = out
    }

    /// Whether the bytes received so far start like a devstream preamble (a plaintext sender).
    var startsWithPlaintextPreamble: Bool {
        let magic = Array("DSTREAM\n".utf8)
        guard io.pointee.in_len >= magic.count else { return false }
        return (0..<magic.count).allSatisfy { io.pointee.in[$0] == magic[$0] }
    }

    private func handshakeFailure(_ f: Failure, _ what: String, _ timeout: Duration) -> TransferError {
        switch f {
        case .socket(let e) where e == .timedOut:
            return TransferError(.timeout, "\(what) timed out: no reply within \(timeout); is the peer a devstream \(context.isServer ? "sender" : "receiver") with TLS options?")
        case .socket(let e) where (e == .connectionReset || e == .brokenPipe) && !context.isServer:
            // A devstream receiver answers bad credentials with a TLS alert; it resets a
            // connection it could not admit before authentication.
            return TransferError(.rejected, "\(what) failed: the receiver reset the connection before it was authenticated (\(e)): a devstream receiver does that to a connection it cannot admit (too many waiting to authenticate, or not done within its admission deadline), and answers wrong credentials with a TLS alert instead; or the receiver went away. Retry, and check what else connects to the receiver")
        case .socket(let e) where e == .connectionReset || e == .brokenPipe:
            return TransferError(.peerClosed, "\(what) failed: the peer closed the connection (\(e)); it refused our credentials or does not speak TLS: use the same pre-shared key, or certificates from the same CA, at both ends",
                                 hint: "the same --psk-file, or certificates from the same --tls-ca, at both ends")
        case .socket(let e):
            return TransferError(.peerClosed, "\(what) failed: \(e)")
        case .tls(let r):
            let (why, hint) = context.explain(r)
            return TransferError(.rejected, "\(what) failed: \(why) (\(r))", hint: hint)
        }
    }

    // MARK: Data

    /// What one send through the stream did.
    package struct SendResult {
        /// Nothing was sent: another thread was sending on the stream (`ifFree`).
        var skipped = false
        /// Some of the bytes reached the socket (a failure after that tore the stream).
        var wentOut = false
        var failure: Failure?
    }

    /// Encrypts all of `bytes` and sends the records (one batch per `sendCapacity`) with
    /// `SocketSend`, holding the stream's lock throughout, so records go out in the order they
    /// were made and no other frame is interleaved.
    /// - Parameters:
    ///   - timeout: how long the peer may leave the socket full (nil: no limit; `.zero`: never
    ///     wait, and what the socket does not take at once is dropped).
    ///   - ring: the calling thread's ring; nil sends with `send(2)` on this thread.
    ///   - ifFree: skip the send when another thread is sending on the stream.
    package func send(_ bytes: UnsafeRawBufferPointer, timeout: Duration?, ring: Ring?, ifFree: Bool = false) -> SendResult {
        if ifFree {
            return lock.withLockIfAvailable { sendLocked(bytes, timeout: timeout, ring: ring) } ?? SendResult(skipped: true)
        }
        return lock.withLock { sendLocked(bytes, timeout: timeout, ring: ring) }
    }

    private func sendLocked(_ bytes: UnsafeRawBufferPointer, timeout: Duration?, ring: Ring?) -> SendResult {
        var result = SendResult()
        var off = 0
        while off < bytes.count {
            ERR_clear_error()
            let n = SSL_write(ssl, bytes.baseAddress! + off, Int32(min(bytes.count - off, 1 << 30)))
            if n > 0 { off += Int(n); continue }
            let e = SSL_get_error(ssl, n)
            guard e == SSL_ERROR_WANT_WRITE else {
                result.failure = .tls(describe(e))
                return result
            }
            guard flushLocked(ring: ring, timeout: timeout, into: &result) else { return result }
        }
        _ = flushLocked(ring: ring, timeout: timeout, into: &result)
        return result
    }

    /// `send` for an array, throwing (set-up paths and tests).
    package func send(_ bytes: [UInt8], ring: Ring?, timeout: Duration) throws(Failure) {
        let result = bytes.withUnsafeBytes { send($0, timeout: timeout, ring: ring) }
        if let failure = result.failure { throw failure }
    }

    /// Receives up to `count` bytes (fewer only when the peer closed) into a new array.
    package func receive(count: Int, ring: Ring, timeout: Duration) throws(Failure) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var failure: Failure?
        let n = out.withUnsafeMutableBytes { b -> Int in
            do throws(Failure) { return try recvExactly(into: b, ring: ring, timeout: timeout) } catch { failure = error; return 0 }
        }
        if let failure { throw failure }
        return Array(out[0..<n])
    }

    /// Receives and decrypts exactly `buffer.count` bytes; fewer only when the peer closed.
    package func recvExactly(into buffer: UnsafeMutableRawBufferPointer, ring: Ring, timeout: Duration) throws(Failure) -> Int {
        var got = 0
        while got < buffer.count {
            let (n, e, reasons) = lock.withLock { () -> (Int32, Int32, String) in
                ERR_clear_error()
                let n = SSL_read(ssl, buffer.baseAddress! + got, Int32(min(buffer.count - got, 1 << 30)))
                let e = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, n)
                return (n, e, n > 0 || e == SSL_ERROR_WANT_READ || e == SSL_ERROR_ZERO_RETURN ? "" : describe(e))
            }
            if n > 0 { got += Int(n); continue }
            switch e {
            case SSL_ERROR_WANT_READ:
                if try fill(ring: ring, timeout: timeout) == 0 { return got }
            case SSL_ERROR_ZERO_RETURN:
                return got
            default:
                throw .tls(reasons)
            }
        }
        return got
    }

    /// Decrypts whatever is already waiting on the socket (non-blocking) into `buffer`; for
    /// reading the peer's `error` frame after a failed send.
    package func readAvailable(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var got = 0
        while got < buffer.count {
            let (n, e) = lock.withLock { () -> (Int32, Int32) in
                let n = SSL_read(ssl, buffer.baseAddress! + got, Int32(buffer.count - got))
                return (n, n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, n))
            }
            if n > 0 { got += Int(n); continue }
            guard e == SSL_ERROR_WANT_READ, let m = try? fill(ring: nil, timeout: .zero, nonblocking: true), m > 0 else { break }
        }
        return got
    }

    /// Sends what SSL wrote into the out buffer (called with `lock` held, or during the
    /// handshake, before any other thread knows the stream). What does not go out is dropped:
    /// the stream is torn then, and the caller fails.
    /// - Returns: false when the send failed (`result.failure` says why).
    private func flushLocked(ring: Ring?, timeout: Duration?, into result: inout SendResult) -> Bool {
        let count = io.pointee.out_len
        guard count > 0 else { return true }
        io.pointee.out_len = 0
        let b = UnsafeRawBufferPointer(start: io.pointee.out, count: count)
        let o = SocketSend.sendAll(fd: fd, b, timeout: timeout, ring: ring, faults: faults)
        if o.sent > 0 { result.wentOut = true }
        guard let e = o.error else { return true }
        result.failure = .socket(e)
        return false
    }

    /// `flushLocked(ring:timeout:into:)`, throwing (the handshake).
    private func flushLocked(ring: Ring?, timeout: Duration) throws(Failure) {
        var result = SendResult()
        if !flushLocked(ring: ring, timeout: timeout, into: &result), let failure = result.failure { throw failure }
    }

    /// Receives more bytes into the in buffer (one `recv`, up to its free space).
    /// - Returns: the bytes received; 0 at end of stream.
    private func fill(ring: Ring?, timeout: Duration, nonblocking: Bool = false) throws(Failure) -> Int {
        let (start, space) = lock.withLock { () -> (UnsafeMutablePointer<UInt8>, Int) in
            let p = io.pointee
            if p.in_off == p.in_len {
                io.pointee.in_off = 0; io.pointee.in_len = 0
            } else if p.in_len == Self.receiveCapacity || p.in_off > Self.receiveCapacity / 2 {
                let keep = p.in_len - p.in_off
                memmove(p.in, p.in + p.in_off, keep)
                io.pointee.in_off = 0; io.pointee.in_len = keep
            }
            return (io.pointee.in + io.pointee.in_len, Self.receiveCapacity - io.pointee.in_len)
        }
        // SSL asks for more only once it has consumed every byte (the BIO reports "would block"
        // only when empty), so there is always room; never trap on it.
        guard space > 0 else { throw .tls("the receive buffer is full inside one record") }
        let n: Int
        if let ring, !nonblocking {
            do { n = try ring.perform(.recv(fd: fd, buffer: UnsafeMutableRawBufferPointer(start: start, count: space)), timeout: timeout) } catch {
                throw .socket(error)
            }
        } else {
            let r = recv(fd, start, space, nonblocking ? Int32(MSG_DONTWAIT) : 0)
            if r < 0 { throw .socket(.current) }
            n = r
        }
        lock.withLock { io.pointee.in_len += n }
        return n
    }

    // MARK: Errors

    /// The reasons for a failed SSL call, from SSL_get_error and OpenSSL's error queue.
    private func describe(_ err: Int32) -> String {
        var parts: [String] = []
        let queued = Self.openSSLErrors()
        if !queued.isEmpty { parts.append(queued) }
        let verify = SSL_get_verify_result(ssl)
        if case .x509 = context.options.mode, verify != X509_V_OK, let s = X509_verify_cert_error_string(verify) {
            parts.append("certificate check: \(String(cString: s))")
        }
        if parts.isEmpty {
            switch err {
            case SSL_ERROR_SYSCALL: parts.append("the connection ended without a TLS close (unexpected eof)")
            case SSL_ERROR_ZERO_RETURN: parts.append("the peer closed the TLS session")
            default: parts.append("SSL error \(err)")
            }
        }
        return parts.joined(separator: "; ")
    }

    /// Drains this thread's OpenSSL error queue into one line.
    static func openSSLErrors() -> String {
        var out: [String] = []
        while true {
            let e = ERR_get_error()
            if e == 0 { break }
            if let r = ERR_reason_error_string(e) { out.append(String(cString: r)) } else { out.append("error \(e)") }
        }
        return out.joined(separator: "; ")
    }
}

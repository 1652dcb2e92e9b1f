internal import COpenSSL
import Glibc
import Synchronization
import DSRing

/// How a session authenticates and encrypts its channels: TLS 1.3 (OpenSSL 3), AES-GCM.
///
/// - `psk`: both ends hold the same secret (`--psk-file`); TLS 1.3 external PSK with (EC)DHE,
///   so a recorded session stays secret even if the key leaks later.
/// - `x509`: mutual certificates (`--tls-cert`, `--tls-key`, `--tls-ca`); each end presents
///   its certificate and verifies the peer's chain against `ca`. Any certificate that `ca`
///   issued is accepted (no host name check): use a CA dedicated to devstream peers.
public struct SecurityOptions: Sendable, Equatable {
    public enum Mode: Sendable, Equatable {
        case psk(key: [UInt8])
        /// A nil certificate or key makes a client that presents none (a receiver refuses it).
        case x509(certificate: String?, privateKey: String?, ca: String)
    }
    public var mode: Mode
    public init(_ mode: Mode) { self.mode = mode }

    /// The smallest key a PSK file may hold.
    public static let minimumKeyLength = 32

    /// Reads a PSK file: if its content (whitespace trimmed) is all hex digits, the key is
    /// those hex bytes; otherwise it is the file's raw bytes. Either way at least 32 bytes.
    /// (`openssl rand -hex 32 > key` makes one.)
    public static func pskFile(_ path: String) throws(TransferError) -> SecurityOptions {
        guard let raw = readSmallFile(path) else {
            throw TransferError(.usage, "--psk-file \(path): cannot read it (\(Errno.current)); make one with `openssl rand -hex 32 > \(path)`")
        }
        let text = raw.filter { !($0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09) }
        let isHex = !text.isEmpty && text.count % 2 == 0 && text.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x66) }
        var key: [UInt8]
        if isHex {
            key = []
            key.reserveCapacity(text.count / 2)
            func nibble(_ c: UInt8) -> UInt8 { c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x61 + 10 }
            var i = 0
            while i < text.count { key.append(nibble(text[i]) << 4 | nibble(text[i + 1])); i += 2 }
        } else {
            key = raw
        }
        guard key.count >= minimumKeyLength else {
            throw TransferError(.usage, "--psk-file \(path): the key is \(key.count) bytes (\(isHex ? "hex" : "raw")); at least \(minimumKeyLength) are needed, e.g. `openssl rand -hex 32 > \(path)`")
        }
        return SecurityOptions(.psk(key: key))
    }

    private static func readSmallFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while out.count < 1 << 16 {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { break }
            out += buf[0..<n]
        }
        return out
    }
}

extension Endpoint {
    /// Whether this endpoint is on the loopback network (127.0.0.0/8, ::1); 0.0.0.0 and `::`
    /// (every interface) are not.
    public func isLoopback() throws(TransferError) -> Bool {
        var (storage, _, family) = try resolve()
        return withUnsafeBytes(of: &storage) { b -> Bool in
            if family == AF_INET {
                return b.load(fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \.sin_addr)!, as: UInt8.self) == 127
            }
            if family == AF_INET6 {
                let at = MemoryLayout<sockaddr_in6>.offset(of: \.sin6_addr)!
                let a = Array(b[at..<(at + 16)])
                if a[0..<15].allSatisfy({ $0 == 0 }) && a[15] == 1 { return true }          // ::1
                if a[0..<10].allSatisfy({ $0 == 0 }) && a[10] == 0xff && a[11] == 0xff { return a[12] == 127 }  // ::ffff:127.x
            }
            return false
        }
    }
}

/// A configured `SSL_CTX` for one side of a session, made once from `SecurityOptions`
/// (certificates and keys are loaded here, so a bad path fails before any connection).
package final class SecurityContext: @unchecked Sendable {
    // @unchecked: the SSL_CTX is configured in init and only read afterwards (SSL_new is
    // thread-safe on a configured context); `psk` is immutable after init.
    let ctx: OpaquePointer
    private let psk: UnsafeMutablePointer<ds_psk>?
    package let options: SecurityOptions
    package let isServer: Bool

    /// Exporter label for the session token that binds channels 1... to channel 0.
    static let sessionLabel = "EXPORTER-devstream-session"
    static let tokenLength = 32

    package init(_ options: SecurityOptions, server: Bool) throws(TransferError) {
        self.options = options
        isServer = server
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()) else {
            throw TransferError(.localIO, "cannot create a TLS context: \(SecureStream.openSSLErrors())")
        }
        self.ctx = ctx
        var psk: UnsafeMutablePointer<ds_psk>?
        do throws(TransferError) {
            guard ds_ctx_tls13_only(ctx) == 1, SSL_CTX_set_num_tickets(ctx, 0) == 1 else {
                throw TransferError(.localIO, "cannot configure TLS 1.3: \(SecureStream.openSSLErrors())")
            }
            ds_ctx_set_mode(ctx)
            guard ds_ctx_set_sid_context(ctx) == 1 else {
                throw TransferError(.localIO, "cannot configure TLS: \(SecureStream.openSSLErrors())")
            }
            switch options.mode {
            case .psk(let key):
                guard key.count >= SecurityOptions.minimumKeyLength else {
                    throw TransferError(.usage, "the PSK is \(key.count) bytes; at least \(SecurityOptions.minimumKeyLength) are needed")
                }
                // The TLS PSK is SHA-256("devstream psk v1" || key): any key length >= 32 maps to
                // the suite's hash length.
                let p = UnsafeMutablePointer<ds_psk>.allocate(capacity: 1)
                psk = p
                let material = Array("devstream psk v1".utf8) + key
                withUnsafeMutableBytes(of: &p.pointee.key) { out in
                    _ = material.withUnsafeBytes { EVP_Digest($0.baseAddress, $0.count, out.baseAddress!.assumingMemoryBound(to: UInt8.self), nil, EVP_sha256(), nil) }
                }
                guard SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256") == 1 else {
                    throw TransferError(.localIO, "cannot select TLS_AES_128_GCM_SHA256: \(SecureStream.openSSLErrors())")
                }
                ds_ctx_use_psk(ctx, p)
                // Should the server not take the PSK, OpenSSL falls back to certificates: with no
                // CA loaded, any certificate fails verification, so a PSK session is PSK or nothing.
                if !server { SSL_CTX_set_verify(ctx, ds_verify_peer(), nil) }
            case .x509(let cert, let key, let ca):
                guard SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384") == 1 else {
                    throw TransferError(.localIO, "cannot select the AES-GCM suites: \(SecureStream.openSSLErrors())")
                }
                if server && (cert == nil || key == nil) {
                    throw TransferError(.usage, "a TLS receiver needs --tls-cert and --tls-key (and --tls-ca)")
                }
                if let cert {
                    try Self.checkReadable(cert, option: "--tls-cert")
                    guard SSL_CTX_use_certificate_chain_file(ctx, cert) == 1 else {
                        throw TransferError(.usage, "--tls-cert \(cert): not a PEM certificate (\(SecureStream.openSSLErrors()))")
                    }
                }
                if let key {
                    try Self.checkReadable(key, option: "--tls-key")
                    guard SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1 else {
                        throw TransferError(.usage, "--tls-key \(key): not a PEM private key (\(SecureStream.openSSLErrors()))")
                    }
                    guard SSL_CTX_check_private_key(ctx) == 1 else {
                        throw TransferError(.usage, "--tls-key \(key) does not belong to the certificate in --tls-cert \(cert ?? "-")")
                    }
                }
                try Self.checkReadable(ca, option: "--tls-ca")
                guard SSL_CTX_load_verify_locations(ctx, ca, nil) == 1 else {
                    throw TransferError(.usage, "--tls-ca \(ca): cannot load CA certificates (\(SecureStream.openSSLErrors()))")
                }
                SSL_CTX_set_verify(ctx, server ? ds_verify_peer_required() : ds_verify_peer(), nil)
            }
        } catch {
            SSL_CTX_free(ctx)
            psk?.deallocate()
            throw error
        }
        self.psk = psk
    }

    private static func checkReadable(_ path: String, option: String) throws(TransferError) {
        guard access(path, R_OK) == 0 else {
            throw TransferError(.usage, "\(option) \(path): cannot read it (\(Errno.current))")
        }
    }

    deinit {
        SSL_CTX_free(ctx)
        if let psk {
            withUnsafeMutableBytes(of: &psk.pointee.key) { memset($0.baseAddress!, 0, $0.count) }
            psk.deallocate()
        }
    }

    /// What the user should check for a handshake failure whose OpenSSL reasons are `reasons`.
    func hint(_ reasons: String) -> String {
        let r = reasons.lowercased()
        if case .psk = options.mode, r.contains("certificate") {
            return "the peer uses certificates (--tls-*) and this end a PSK (--psk-file): give both ends the same kind"
        }
        if r.contains("wrong version number") || r.contains("packet length too long") || r.contains("record layer failure")
            || r.contains("http request") {
            return "the peer does not speak TLS (a plaintext devstream?): give both ends the same --psk-file or --tls-* options"
        }
        if r.contains("binder") || r.contains("decrypt error") || r.contains("bad record mac") || r.contains("decryption failed")
            || r.contains("illegal parameter") {
            if case .psk = options.mode { return "the pre-shared keys differ: both ends need the same --psk-file" }
        }
        if r.contains("certificate verify failed") {
            return "the peer's certificate does not verify against --tls-ca"
        }
        if r.contains("peer did not return a certificate") || r.contains("certificate required") {
            return "mutual TLS: the client must present a certificate (--tls-cert and --tls-key) issued by the receiver's --tls-ca"
        }
        if r.contains("alert unknown ca") || r.contains("alert bad certificate") || r.contains("alert certificate")
            || r.contains("alert decrypt error") {
            return "the peer refused our certificate: it must be issued by the CA the peer trusts (its --tls-ca) and be valid now"
        }
        if r.contains("no shared cipher") || r.contains("no suitable") || r.contains("handshake failure")
            || r.contains("missing extension") {
            return "the two ends use different authentication: both need --psk-file, or both --tls-cert/--tls-key/--tls-ca"
        }
        return "check that both ends use the same --psk-file, or certificates from the same --tls-ca"
    }
}

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
    private let lock: UnsafeMutablePointer<pthread_mutex_t>
    package let context: SecurityContext
    /// The session token (`SSL_export_keying_material`), derived once after the handshake.
    package private(set) var token: [UInt8] = []
    /// What `handle` and the errors call the peer.
    let peer: String

    static let sendCapacity = (1 << 20) + (64 << 10)
    static let receiveCapacity = 256 << 10

    /// Failures of the stream: the socket's, or TLS's (with OpenSSL's reasons).
    package enum Failure: Error {
        case socket(Errno)
        case tls(String)
    }

    // nonisolated(unsafe): made once (a lazy global is initialized once, thread-safely) and
    // only read afterwards; OpenSSL treats a BIO_METHOD as immutable once set up.
    nonisolated(unsafe) private static let bioMethod: OpaquePointer? = ds_bio_method_new()

    private init(fd: Int32, context: SecurityContext, peer: String) throws(TransferError) {
        self.fd = fd
        self.context = context
        self.peer = peer
        guard let method = Self.bioMethod, let ssl = SSL_new(context.ctx) else {
            throw TransferError(.localIO, "cannot create a TLS connection: \(Self.openSSLErrors())")
        }
        self.ssl = ssl
        io = .allocate(capacity: 1)
        io.initialize(to: ds_bio_buffers(
            out: .allocate(capacity: Self.sendCapacity), out_len: 0, out_cap: Self.sendCapacity,
            in: .allocate(capacity: Self.receiveCapacity), in_len: 0, in_off: 0))
        lock = .allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
        guard let bio = ds_bio_new(method, io) else {
            SSL_free(ssl)
            throw TransferError(.localIO, "cannot create a TLS BIO: \(Self.openSSLErrors())")
        }
        SSL_set_bio(ssl, bio, bio)
        if context.isServer { SSL_set_accept_state(ssl) } else { SSL_set_connect_state(ssl) }
    }

    deinit {
        Self.registry.withLock { r in
            // A dying object's weak references already read nil; a newer stream on a reused fd
            // number does not.
            if let w = r[fd], w.stream == nil { r[fd] = nil }
        }
        SSL_free(ssl)
        io.pointee.out.deallocate()
        io.pointee.in.deallocate()
        io.deallocate()
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    // MARK: Handshake

    /// Runs the TLS 1.3 handshake on a connected socket (client or server per `context`),
    /// derives the session token and registers the stream for `fd` (see `forSocket`).
    /// - Parameter timeout: how long the peer may stay silent during the handshake.
    package static func handshake(fd: Int32, context: SecurityContext, ring: Ring, timeout: Duration,
                                  peer: String) throws(TransferError) -> SecureStream {
        let s = try SecureStream(fd: fd, context: context, peer: peer)
        try s.runHandshake(ring: ring, timeout: timeout)
        s.identity = connectionIdentity(fd)
        register(s)
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
                    throw TransferError(.peerClosed, "\(what) failed: the peer closed the connection during the handshake (it refused our credentials, or it is not a TLS devstream): \(context.isServer ? "give the sender" : "check that the receiver has") the same --psk-file, or certificates from the same --tls-ca")
                }
            case SSL_ERROR_WANT_WRITE:
                continue
            default:
                if context.isServer && startsWithPlaintextPreamble {
                    throw TransferError(.rejected, "the sender at \(peer) is not using TLS (a plaintext devstream sender); this receiver requires TLS: give the sender the same --psk-file or --tls-* options")
                }
                throw TransferError(.rejected, "\(what) failed: \(context.hint(reasons)) (\(reasons))")
            }
        }
        if case .psk = context.options.mode, SSL_session_reused(ssl) != 1 {
            throw TransferError(.rejected, "\(what) did not use the pre-shared key; refusing the session: both ends need the same --psk-file")
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
        case .socket(let e) where e == .connectionReset || e == .brokenPipe:
            return TransferError(.peerClosed, "\(what) failed: the peer closed the connection (\(e)); it refused our credentials or does not speak TLS: use the same --psk-file, or certificates from the same --tls-ca, at both ends")
        case .socket(let e):
            return TransferError(.peerClosed, "\(what) failed: \(e)")
        case .tls(let r):
            return TransferError(.rejected, "\(what) failed: \(context.hint(r)) (\(r))")
        }
    }

    // MARK: Data

    /// Encrypts and sends all of `bytes` (one batch of records per `sendCapacity`).
    /// - Parameter ring: the calling thread's ring; nil sends with blocking `send(2)`.
    package func sendAll(_ bytes: UnsafeRawBufferPointer, ring: Ring?, timeout: Duration) throws(Failure) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        var off = 0
        while off < bytes.count {
            ERR_clear_error()
            let n = SSL_write(ssl, bytes.baseAddress! + off, Int32(min(bytes.count - off, 1 << 30)))
            if n > 0 { off += Int(n); continue }
            let e = SSL_get_error(ssl, n)
            guard e == SSL_ERROR_WANT_WRITE else { throw .tls(describe(e)) }
            try flushLocked(ring: ring, timeout: timeout)
        }
        try flushLocked(ring: ring, timeout: timeout)
    }

    /// `sendAll` for an array (set-up and control paths).
    package func send(_ bytes: [UInt8], ring: Ring?, timeout: Duration) throws(Failure) {
        var failure: Failure?
        bytes.withUnsafeBytes { b in
            do throws(Failure) { try sendAll(b, ring: ring, timeout: timeout) } catch { failure = error }
        }
        if let failure { throw failure }
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
            pthread_mutex_lock(lock)
            ERR_clear_error()
            let n = SSL_read(ssl, buffer.baseAddress! + got, Int32(min(buffer.count - got, 1 << 30)))
            let e = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, n)
            let reasons = n > 0 || e == SSL_ERROR_WANT_READ || e == SSL_ERROR_ZERO_RETURN ? "" : describe(e)
            pthread_mutex_unlock(lock)
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
            pthread_mutex_lock(lock)
            let n = SSL_read(ssl, buffer.baseAddress! + got, Int32(buffer.count - got))
            let e = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, n)
            pthread_mutex_unlock(lock)
            if n > 0 { got += Int(n); continue }
            guard e == SSL_ERROR_WANT_READ, let m = try? fill(ring: nil, timeout: .zero, nonblocking: true), m > 0 else { break }
        }
        return got
    }

    /// Best effort, never blocks: encrypts `bytes` and sends them with MSG_DONTWAIT, unless
    /// another thread is sending on this stream (then its frame must not be interleaved).
    package func trySend(_ bytes: [UInt8]) {
        guard pthread_mutex_trylock(lock) == 0 else { return }
        defer { pthread_mutex_unlock(lock) }
        let ok = bytes.withUnsafeBytes { b in SSL_write(ssl, b.baseAddress, Int32(b.count)) == Int32(b.count) }
        guard ok else { return }
        var off = 0
        while off < io.pointee.out_len {
            let n = Glibc.send(fd, io.pointee.out + off, io.pointee.out_len - off, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            if n <= 0 { break }
            off += n
        }
        io.pointee.out_len = 0
    }

    /// Sends what SSL wrote into the out buffer (called with `lock` held, or during the
    /// handshake, before any other thread knows the stream).
    private func flushLocked(ring: Ring?, timeout: Duration) throws(Failure) {
        let count = io.pointee.out_len
        guard count > 0 else { return }
        io.pointee.out_len = 0
        let b = UnsafeRawBufferPointer(start: io.pointee.out, count: count)
        if let ring {
            do { try ring.sendAll(fd: fd, b, timeout: timeout) } catch { throw .socket(error) }
            return
        }
        var off = 0
        while off < count {
            let n = Glibc.send(fd, b.baseAddress! + off, count - off, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw .socket(.current) }
            if n == 0 { throw .socket(.connectionReset) }
            off += n
        }
    }

    /// Receives more bytes into the in buffer (one `recv`, up to its free space).
    /// - Returns: the bytes received; 0 at end of stream.
    private func fill(ring: Ring?, timeout: Duration, nonblocking: Bool = false) throws(Failure) -> Int {
        pthread_mutex_lock(lock)
        let p = io.pointee
        if p.in_off == p.in_len {
            io.pointee.in_off = 0; io.pointee.in_len = 0
        } else if p.in_len == Self.receiveCapacity || p.in_off > Self.receiveCapacity / 2 {
            let keep = p.in_len - p.in_off
            memmove(p.in, p.in + p.in_off, keep)
            io.pointee.in_off = 0; io.pointee.in_len = keep
        }
        let start = io.pointee.in + io.pointee.in_len
        let space = Self.receiveCapacity - io.pointee.in_len
        pthread_mutex_unlock(lock)
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
        pthread_mutex_lock(lock)
        io.pointee.in_len += n
        pthread_mutex_unlock(lock)
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

    // MARK: Sockets to streams

    /// The socket's inode (sockfs) at the handshake: a later socket that reuses the fd number is
    /// another socket, with another inode. (Unlike the address pair, it survives a reset.)
    private var identity: (UInt, UInt) = (0, 0)

    private static func connectionIdentity(_ fd: Int32) -> (UInt, UInt) {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return (UInt.max, UInt.max) }
        return (UInt(st.st_dev), UInt(st.st_ino))
    }

    private struct Weak { weak var stream: SecureStream? }
    private static let registry = Mutex<[Int32: Weak]>([:])

    private static func register(_ s: SecureStream) {
        registry.withLock { $0[s.fd] = Weak(stream: s) }
    }

    /// The stream whose handshake ran on `fd`, while it lives. Code that only has a socket (an
    /// abort's farewell, a migration's feedback reader and control replies) uses it to speak
    /// through TLS; nil means the socket is plaintext.
    package static func forSocket(_ fd: Int32) -> SecureStream? {
        guard let s = registry.withLock({ $0[fd]?.stream }) else { return nil }
        return s.identity == connectionIdentity(fd) ? s : nil
    }

    /// Forgets the stream of `fd` (call before closing a socket whose stream may outlive it).
    package static func forget(_ fd: Int32) {
        registry.withLock { _ = $0.removeValue(forKey: fd) }
    }
}

extension SecureStream.Failure {
    /// As a transfer error on `channel`, `doing` what.
    func transferError(_ doing: String, channel: Int) -> TransferError {
        switch self {
        case .socket(let e): TransferError.network(e, doing, channel: channel)
        case .tls(let r): TransferError(.protocolViolation, "\(doing) on channel \(channel): TLS failed (\(r)); the stream was tampered with or the peer is broken")
        }
    }

    /// Like `transferError(_:channel:)`; a TLS alert from the peer (it refused this end's
    /// credentials after the handshake, as a TLS 1.3 server does with a client certificate)
    /// gets the same advice as a failed handshake.
    func transferError(_ doing: String, channel: Int, stream: SecureStream) -> TransferError {
        if case .tls(let r) = self, r.contains("alert") {
            return TransferError(.rejected, "\(doing) on channel \(channel): the peer ended the TLS session: \(stream.context.hint(r)) (\(r))")
        }
        return transferError(doing, channel: channel)
    }
}

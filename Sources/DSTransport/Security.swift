internal import COpenSSL
import Glibc
import DSRing
import DSSupport

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

    /// The smallest key a PSK file may hold, in bytes (64 hex digits).
    public static let minimumKeyLength = 32

    /// Reads a PSK file, strictly: it must be a regular file that neither its group nor others
    /// can read or write (mode 0600 or 0400, as ssh wants of a private key), holding the key as
    /// hex — at least 64 hex digits (32 bytes), an even number, nothing else but whitespace
    /// around them. (`openssl rand -hex 32 > key; chmod 600 key` makes one; `makeKeyFile`
    /// too.) The messages never quote the file's content.
    public static func pskFile(_ path: String) throws(TransferError) -> SecurityOptions {
        let hint = "make one with `(umask 077; openssl rand -hex 32 > \(path))` and pass it with --psk-file"
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else {
            throw TransferError(.usage, "the PSK file \(path) cannot be read (\(Errno.current)); give a readable file that holds the key", hint: hint)
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw TransferError(.usage, "the PSK file \(path) is not a regular file; give a file that holds the key", hint: hint)
        }
        guard st.st_mode & 0o077 == 0 else {
            let mode = String(st.st_mode & 0o777, radix: 8)
            throw TransferError(.usage, "the PSK file \(path) is accessible by others (mode \(mode)): a key others can read is no secret; make it private with `chmod 600 \(path)` (and, if others could read it already, make a new key)",
                                hint: "chmod 600 \(path)")
        }
        guard let raw = readAll(fd, limit: 1 << 16) else {
            throw TransferError(.usage, "the PSK file \(path) cannot be read (\(Errno.current)); give a readable file that holds the key", hint: hint)
        }
        var text = raw[...]
        func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x0a || c == 0x0d || c == 0x09 }
        while let c = text.first, isSpace(c) { text = text.dropFirst() }
        while let c = text.last, isSpace(c) { text = text.dropLast() }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: c - 0x30
            case 0x61...0x66: c - 0x61 + 10
            case 0x41...0x46: c - 0x41 + 10
            default: nil
            }
        }
        if let bad = text.firstIndex(where: { nibble($0) == nil }) {
            throw TransferError(.usage, "the PSK file \(path) holds something other than hex digits (at byte \(bad)): it must hold the key as hex, at least \(2 * minimumKeyLength) digits, with nothing else but whitespace around them",
                                hint: hint)
        }
        guard text.count % 2 == 0, text.count >= 2 * minimumKeyLength else {
            throw TransferError(.usage, "the PSK file \(path) holds \(text.count) hex digits; a key is an even number of them, at least \(2 * minimumKeyLength) (\(minimumKeyLength) bytes): give a longer key",
                                hint: hint)
        }
        var key: [UInt8] = []
        key.reserveCapacity(text.count / 2)
        var i = text.startIndex
        while i < text.endIndex {
            key.append(nibble(text[i])! << 4 | nibble(text[i + 1])!)
            i += 2
        }
        return SecurityOptions(.psk(key: key))
    }

    /// Makes a fresh random key (32 bytes from the kernel's CSPRNG, as hex) in a new file at
    /// `path`, readable by its owner only (0600), and returns the options that use it. A file
    /// already at `path` is replaced. Give the same file (or its content) to the other end.
    public static func makeKeyFile(_ path: String) throws(TransferError) -> SecurityOptions {
        let options = try randomKey()
        try options.writeKeyFile(path)
        return options
    }

    /// A fresh random pre-shared key (32 bytes from the kernel's CSPRNG), held in memory only:
    /// for two ends in one process, or before `writeKeyFile`.
    public static func randomKey() throws(TransferError) -> SecurityOptions {
        guard let key = readSmallFile("/dev/urandom", limit: minimumKeyLength), key.count == minimumKeyLength else {
            throw TransferError(.localIO, "cannot read random bytes for a key from /dev/urandom: \(Errno.current)")
        }
        return SecurityOptions(.psk(key: key))
    }

    /// Writes this pre-shared key, as hex, to a new file at `path`, readable by its owner only
    /// (0600; written to a temporary name and renamed, so the key is never readable by others,
    /// not even half written). A file already at `path` is replaced.
    /// - Throws: `.usage` when these options hold certificates, not a key; `.localIO` when the
    ///   file cannot be written.
    public func writeKeyFile(_ path: String) throws(TransferError) {
        guard case .psk(let key) = mode else {
            throw TransferError(.usage, "only a pre-shared key can be written to a key file; these options use certificates")
        }
        let hex = Hex.bytes(key) + "\n"
        let tmp = "\(path).\(getpid()).tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw TransferError(.localIO, "cannot create the key file \(tmp): \(Errno.current)") }
        // The umask cannot widen 0600, but it can narrow it: the owner must be able to read it.
        let ok = fchmod(fd, 0o600) == 0
            && hex.utf8CString.withUnsafeBytes { b in write(fd, b.baseAddress, b.count - 1) == b.count - 1 } && fsync(fd) == 0
        close(fd)
        guard ok, rename(tmp, path) == 0 else {
            let e = Errno.current
            unlink(tmp)
            throw TransferError(.localIO, "cannot write the key file \(path): \(e)")
        }
    }

    private static func readSmallFile(_ path: String, limit: Int = 1 << 16) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return readAll(fd, limit: limit)
    }

    /// Up to `limit` bytes from `fd`; nil on a read error.
    private static func readAll(_ fd: Int32, limit: Int) -> [UInt8]? {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, min($0.count, limit - out.count)) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { break }
            out += buf[0..<n]
        }
        return out
    }
}

/// Which protection a session had; every report says it (`protection` in the CLI's JSON).
public enum SessionProtection: String, Sendable, Equatable {
    /// TLS 1.3, both ends authenticated by a pre-shared key.
    case tlsPSK = "tls-psk"
    /// TLS 1.3, both ends authenticated by x509 certificates from a CA they trust.
    case tlsX509 = "tls-x509"
    /// None: plaintext and unauthenticated (`TransferOptions.allowInsecure`).
    case insecure
}

extension TransferOptions {
    /// The protection a session with these options has (the receiver admits only peers with
    /// the same).
    public var protection: SessionProtection {
        switch security?.mode {
        case .psk: .tlsPSK
        case .x509: .tlsX509
        case nil: .insecure
        }
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
                    throw TransferError(.usage, "a TLS receiver needs a certificate and its private key (SecurityOptions.Mode.x509's certificate and privateKey)",
                                        hint: "--tls-cert and --tls-key (and --tls-ca)")
                }
                if let cert {
                    try Self.checkReadable(cert, what: "the certificate file", option: "--tls-cert")
                    guard SSL_CTX_use_certificate_chain_file(ctx, cert) == 1 else {
                        throw TransferError(.usage, "the certificate file \(cert) holds no PEM certificate (\(SecureStream.openSSLErrors()))",
                                            hint: "--tls-cert")
                    }
                }
                if let key {
                    try Self.checkReadable(key, what: "the private key file", option: "--tls-key")
                    guard SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1 else {
                        throw TransferError(.usage, "the private key file \(key) holds no PEM private key (\(SecureStream.openSSLErrors()))",
                                            hint: "--tls-key")
                    }
                    guard SSL_CTX_check_private_key(ctx) == 1 else {
                        throw TransferError(.usage, "the private key in \(key) does not belong to the certificate in \(cert ?? "-"): give the key of that certificate",
                                            hint: "--tls-key must be the key of --tls-cert")
                    }
                }
                try Self.checkReadable(ca, what: "the CA file", option: "--tls-ca")
                guard SSL_CTX_load_verify_locations(ctx, ca, nil) == 1 else {
                    throw TransferError(.usage, "cannot load CA certificates from \(ca) (\(SecureStream.openSSLErrors()))", hint: "--tls-ca")
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

    /// Refuses a file this process cannot read: `what` names it in the message, `option` (a
    /// CLI flag) in the hint.
    private static func checkReadable(_ path: String, what: String, option: String) throws(TransferError) {
        guard access(path, R_OK) == 0 else {
            throw TransferError(.usage, "\(what) \(path) cannot be read (\(Errno.current))", hint: option)
        }
    }

    deinit {
        SSL_CTX_free(ctx)
        if let psk {
            withUnsafeMutableBytes(of: &psk.pointee.key) { _ = memset($0.baseAddress!, 0, $0.count) }
            psk.deallocate()
        }
    }

    /// Why a handshake whose OpenSSL reasons are `reasons` failed and what to check: the
    /// message in library terms, the hint with the CLI's flags.
    func explain(_ reasons: String) -> (message: String, hint: String) { Self.explain(reasons, mode: options.mode) }

    /// `explain(_:)` for an end whose security is `mode`.
    static func explain(_ reasons: String, mode: SecurityOptions.Mode) -> (message: String, hint: String) {
        let r = reasons.lowercased()
        if case .psk = mode, r.contains("certificate") {
            return ("the peer uses certificates and this end a pre-shared key: give both ends the same kind of security",
                    "--psk-file at both ends, or --tls-cert/--tls-key/--tls-ca at both ends")
        }
        if r.contains("wrong version number") || r.contains("packet length too long") || r.contains("record layer failure")
            || r.contains("http request") {
            return ("the peer does not speak TLS (a plaintext devstream peer?): give both ends the same security options",
                    "give both ends the same --psk-file or --tls-* options")
        }
        if r.contains("binder") || r.contains("decrypt error") || r.contains("bad record mac") || r.contains("decryption failed")
            || r.contains("illegal parameter") {
            if case .psk = mode {
                return ("the pre-shared keys differ: both ends need the same key", "give both ends the same --psk-file")
            }
        }
        if r.contains("certificate verify failed") {
            return ("the peer's certificate does not verify against this end's CA certificates",
                    "the peer's certificate must be issued by the CA in --tls-ca")
        }
        if r.contains("peer did not return a certificate") || r.contains("certificate required") {
            return ("mutual TLS: the client must present a certificate (and its key) issued by the receiver's CA",
                    "--tls-cert and --tls-key, issued by the receiver's --tls-ca")
        }
        if r.contains("alert unknown ca") || r.contains("alert bad certificate") || r.contains("alert certificate")
            || r.contains("alert decrypt error") {
            return ("the peer refused our certificate: it must be issued by the CA the peer trusts and be valid now",
                    "the CA the peer trusts is its --tls-ca")
        }
        if r.contains("no shared cipher") || r.contains("no suitable") || r.contains("handshake failure")
            || r.contains("missing extension") {
            return ("the two ends use different authentication: both need a pre-shared key, or both certificates",
                    "both --psk-file, or both --tls-cert/--tls-key/--tls-ca")
        }
        return ("check that both ends use the same pre-shared key, or certificates from the same CA",
                "the same --psk-file, or certificates from the same --tls-ca")
    }
}

import ArgumentParser
import Glibc
import DeviceStream
import DSSupport
import DSWire
import DSCodec
import DSRing
import DSTransport
import DSDevices
import DSScheduler

/// `--psk-file`, `--tls-cert/--tls-key/--tls-ca`, `--insecure`: shared by send, receive and
/// migrate. Both ends must give the same kind (and the same key, or certificates from the same CA).
/// Without any of them `send` and `migrate` refuse to start; `receive` makes a one-time key
/// (`ReceiverKey`).
struct SecurityFlags: ParsableArguments {
    @Option(help: "TLS 1.3 with this pre-shared key: a file only its owner can read (chmod 600) holding at least 64 hex digits (`openssl rand -hex 32`), or the one-time key `receive` makes. Both ends need the same key.")
    var pskFile: String?
    @Option(help: "TLS 1.3 mutual authentication: this end's certificate (chain) in PEM. Needs --tls-key and --tls-ca.")
    var tlsCert: String?
    @Option(help: "The private key (PEM) of --tls-cert.")
    var tlsKey: String?
    @Option(help: "CA certificate(s) in PEM: the peer's certificate must be issued by it.")
    var tlsCa: String?
    @Flag(help: "Run without --psk-file/--tls-*: plaintext and unauthenticated, on any address (loopback included). Gives up all protection: any local user can connect, and anyone on the path can read or change the data.")
    var insecure = false

    /// Whether any of the TLS options is given.
    var hasTLSOptions: Bool { pskFile != nil || tlsCert != nil || tlsKey != nil || tlsCa != nil }

    /// Sets `options.security` and `options.allowInsecure`, and checks that the session has
    /// security, or `--insecure`, for `endpoint`.
    func apply(to options: inout TransferOptions, endpoint: Endpoint) throws {
        let x509 = tlsCert != nil || tlsKey != nil || tlsCa != nil
        if pskFile != nil && x509 {
            throw ValidationError("give --psk-file or --tls-cert/--tls-key/--tls-ca, not both")
        }
        if insecure && hasTLSOptions {
            throw ValidationError("--insecure turns security off: give it without --psk-file and --tls-*, or drop it")
        }
        do {
            if let pskFile {
                options.security = try SecurityOptions.pskFile(pskFile)
            } else if x509 {
                guard let tlsCert, let tlsKey, let tlsCa else {
                    throw ValidationError("mutual TLS needs all three of --tls-cert, --tls-key and --tls-ca")
                }
                options.security = SecurityOptions(.x509(certificate: tlsCert, privateKey: tlsKey, ca: tlsCa))
            }
            options.allowInsecure = insecure
            try options.checkPlaintext(endpoint)
            try options.validate()  // again, with TLS's buffers in the memory budget
        } catch let e as TransferError {
            throw ValidationError(e)
        }
    }
}

/// `receive`'s one-time key: with no security option and no `--insecure`, the receiver makes a
/// fresh random pre-shared key, writes it (hex, mode 0600) to `--key-out FILE` or to
/// `devstream-PORT.key` in its working directory, says where on stderr, and removes the file
/// when the receive ends (the key is good for this one session). The sender reads it with
/// `--psk-file FILE` (copied to its host over a channel you trust).
struct ReceiverKey {
    let path: String
    let options: SecurityOptions
    /// Removed by `SignalCleanup` if a signal stops the receive.
    let cleanup: Int

    /// The key for `flags` and `keyOut`: nil when the flags give security or `--insecure`
    /// (then `--key-out` is refused).
    static func make(_ flags: SecurityFlags, keyOut: String?) throws -> SecurityOptions? {
        if flags.hasTLSOptions || flags.insecure {
            if keyOut != nil {
                throw ValidationError("--key-out makes a one-time key: give it without --psk-file, --tls-* and --insecure")
            }
            return nil
        }
        do { return try SecurityOptions.randomKey() } catch { throw ValidationError(error) }
    }

    /// Writes `options`' key for a receiver listening on `endpoint`; nil path: the default.
    static func write(_ options: SecurityOptions, to keyOut: String?, listening endpoint: Endpoint) throws(TransferError) -> ReceiverKey {
        var path = keyOut ?? "devstream-\(endpoint.port).key"
        if !path.hasPrefix("/"), let cwd = getcwd(nil, 0) {
            path = String(cString: cwd) + "/" + path
            free(cwd)
        }
        do { try options.writeKeyFile(path) } catch {
            throw TransferError(error.code, error.message + "; no key, no session",
                                hint: "give a writable --key-out FILE, or an existing key with --psk-file (or --tls-*)")
        }
        return ReceiverKey(path: path, options: options, cleanup: SignalCleanup.register(path))
    }

    /// The stderr lines that tell the user where the key is and what the sender needs.
    func announce(sendVerb: String) {
        Terminal.line("devstream: no --psk-file or --tls-*: made a one-time pre-shared key in \(path) (mode 0600; removed when this receive ends)")
        Terminal.line("devstream: give it to the sender: devstream \(sendVerb) ... --psk-file \(path) (copy it to the sender's host over a channel you trust)")
    }

    func remove() {
        unlink(path)
        SignalCleanup.unregister(cleanup)
    }
}

import ArgumentParser
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
struct SecurityFlags: ParsableArguments {
    @Option(help: "TLS 1.3 with this pre-shared key: a file of hex (e.g. `openssl rand -hex 32`) or of at least 32 raw bytes. Both ends need the same file.")
    var pskFile: String?
    @Option(help: "TLS 1.3 mutual authentication: this end's certificate (chain) in PEM. Needs --tls-key and --tls-ca.")
    var tlsCert: String?
    @Option(help: "The private key (PEM) of --tls-cert.")
    var tlsKey: String?
    @Option(help: "CA certificate(s) in PEM: the peer's certificate must be issued by it.")
    var tlsCa: String?
    @Flag(help: "Allow plaintext (no --psk-file/--tls-*) on a non-loopback address.")
    var insecure = false

    /// Sets `options.security` and `options.allowInsecure`, and checks the plaintext rule for `endpoint`.
    func apply(to options: inout TransferOptions, endpoint: Endpoint) throws {
        let x509 = tlsCert != nil || tlsKey != nil || tlsCa != nil
        if pskFile != nil && x509 {
            throw ValidationError("give --psk-file or --tls-cert/--tls-key/--tls-ca, not both")
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
        } catch let e as TransferError {
            throw ValidationError(e)
        }
    }
}

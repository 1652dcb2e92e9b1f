import Testing
import Glibc
import DSRing
import DSWire
@testable import DSTransport
import DSTestSupport
import DSSupport

/// The library is embedded by VMMs that have no CLI: a user-facing error's `message` says what
/// failed in library terms and names no CLI flag; the flag, when there is one, is in `hint`.
@Suite struct ErrorHintTests {
    /// `error` names no flag in its message, and its hint names `flag`.
    func expectLibraryWording(_ error: TransferError?, flag: String, sourceLocation: SourceLocation = #_sourceLocation) {
        guard let error else {
            Issue.record("no error was thrown", sourceLocation: sourceLocation)
            return
        }
        #expect(!error.message.contains("--"), "message names a flag: \(error.message)", sourceLocation: sourceLocation)
        #expect(!error.message.contains("devstream receive"), "message names a CLI command: \(error.message)", sourceLocation: sourceLocation)
        #expect(error.hint?.contains(flag) == true, "hint lacks \(flag): \(error.hint ?? "nil")", sourceLocation: sourceLocation)
        #expect(error.description == "\(error.message) (\(error.hint ?? ""))", sourceLocation: sourceLocation)
    }

    @Test func transferOptionsName() {
        var o = TransferOptions()
        for bad in [0, Int(WireLimits.maxChannels) + 1] {
            o.connections = bad
            let e = #expect(throws: TransferError.self) { try o.validate() }
            expectLibraryWording(e, flag: "--connections")
            #expect(e?.message.contains("TransferOptions.connections") == true && e?.message.contains("got \(bad)") == true)
            #expect(e?.code == .usage)
        }
        o = TransferOptions()
        o.chunkSize = 1
        var e = #expect(throws: TransferError.self) { try o.validate() }
        expectLibraryWording(e, flag: "--chunk-size")
        #expect(e?.message.contains("TransferOptions.chunkSize") == true)
        o = TransferOptions()
        o.acceleration = 0
        e = #expect(throws: TransferError.self) { try o.validate() }
        expectLibraryWording(e, flag: "--acceleration")
        #expect(e?.message.contains("TransferOptions.acceleration") == true)
    }

    @Test func sessionWithoutSecurity() {
        for host in ["192.0.2.1", "127.0.0.1"] {
            let e = #expect(throws: TransferError.self) { try TransferOptions().checkPlaintext(Endpoint(host: host, port: 7000)) }
            expectLibraryWording(e, flag: "--insecure")
            #expect(e?.hint?.contains("--psk-file") == true && e?.hint?.contains("--key-out") == true)
            #expect(e?.message.contains(host) == true && e?.message.contains("allowInsecure") == true)
        }
    }

    @Test func pskFiles() {
        let missing = "/nonexistent/hint-test-key"
        var e = #expect(throws: TransferError.self) { try SecurityOptions.pskFile(missing) }
        expectLibraryWording(e, flag: "--psk-file")
        #expect(e?.message.contains("the PSK file \(missing) cannot be read") == true, "\(e?.message ?? "")")
        #expect(e?.message.contains("No such file") == true, "\(e?.message ?? "")")
        #expect(e?.hint?.contains("openssl rand -hex 32 > \(missing)") == true)

        let short = tlsTmpPath("short")
        defer { unlink(short) }
        writePrivateFile(short, Array("00112233".utf8))
        e = #expect(throws: TransferError.self) { try SecurityOptions.pskFile(short) }
        expectLibraryWording(e, flag: "--psk-file")
        #expect(e?.message.contains("holds 8 hex digits") == true && e?.message.contains("at least 64") == true, "\(e?.message ?? "")")
        // Open to others: the fix (chmod) is in the message and the hint.
        chmod(short, 0o644)
        e = #expect(throws: TransferError.self) { try SecurityOptions.pskFile(short) }
        #expect(e?.message.contains("chmod 600 \(short)") == true && e?.hint == "chmod 600 \(short)", "\(e?.description ?? "")")
    }

    @Test func certificateFiles() {
        let missing = "/nonexistent/hint-test.pem"
        // A receiver without its certificate and key.
        var e = #expect(throws: TransferError.self) {
            _ = try SecurityContext(SecurityOptions(.x509(certificate: nil, privateKey: nil, ca: missing)), server: true)
        }
        expectLibraryWording(e, flag: "--tls-cert")
        // Unreadable files, each named by what it is.
        for (options, flag, what) in [
            (SecurityOptions(.x509(certificate: missing, privateKey: missing, ca: missing)), "--tls-cert", "the certificate file"),
            (SecurityOptions(.x509(certificate: nil, privateKey: missing, ca: missing)), "--tls-key", "the private key file"),
            (SecurityOptions(.x509(certificate: nil, privateKey: nil, ca: missing)), "--tls-ca", "the CA file"),
        ] {
            e = #expect(throws: TransferError.self) { _ = try SecurityContext(options, server: false) }
            expectLibraryWording(e, flag: flag)
            #expect(e?.message.hasPrefix("\(what) \(missing) cannot be read") == true, "\(e?.message ?? "")")
        }
        // A file that is not PEM.
        let junk = tlsTmpPath("junk")
        defer { unlink(junk) }
        writeFile(junk, Array("not a certificate\n".utf8))
        for (options, flag) in [
            (SecurityOptions(.x509(certificate: junk, privateKey: nil, ca: junk)), "--tls-cert"),
            (SecurityOptions(.x509(certificate: nil, privateKey: junk, ca: junk)), "--tls-key"),
            (SecurityOptions(.x509(certificate: nil, privateKey: nil, ca: junk)), "--tls-ca"),
        ] {
            e = #expect(throws: TransferError.self) { _ = try SecurityContext(options, server: false) }
            expectLibraryWording(e, flag: flag)
        }
    }

    /// Every handshake explanation, for both kinds of security.
    @Test func handshakeExplanations() {
        let psk = SecurityOptions.Mode.psk(key: [UInt8](repeating: 1, count: 32))
        let x509 = SecurityOptions.Mode.x509(certificate: "c", privateKey: "k", ca: "a")
        let cases: [(String, SecurityOptions.Mode, String, String)] = [
            ("tlsv13 alert certificate required", psk, "same kind", "--psk-file"),
            ("wrong version number", x509, "does not speak TLS", "--psk-file"),
            ("decrypt error", psk, "pre-shared keys differ", "--psk-file"),
            ("certificate verify failed", x509, "does not verify", "--tls-ca"),
            ("peer did not return a certificate", x509, "must present a certificate", "--tls-cert"),
            ("tlsv1 alert unknown ca", x509, "refused our certificate", "--tls-ca"),
            ("no shared cipher", x509, "different authentication", "--psk-file"),
            ("something else", psk, "same pre-shared key", "--tls-ca"),
        ]
        for (reasons, mode, says, flag) in cases {
            let (message, hint) = SecurityContext.explain(reasons, mode: mode)
            #expect(message.contains(says), "\(reasons): \(message)")
            #expect(!message.contains("--"), "\(reasons): \(message)")
            #expect(hint.contains(flag), "\(reasons): \(hint)")
        }
    }

    /// Connection refused: the message asks for a receiver, the hint names the CLI command.
    @Test func connectionRefused() throws {
        // A port nobody listens on: bound (to learn it), then closed.
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET); addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) } }
        close(s)
        let port = UInt16(bigEndian: addr.sin_port)
        let ring = try Ring(entries: 4)
        let endpoint = Endpoint(host: "127.0.0.1", port: port)
        let e = #expect(throws: TransferError.self) { _ = try Sockets.connect(endpoint, ring: ring, timeout: .seconds(5)) }
        expectLibraryWording(e, flag: "--listen")
        #expect(e?.message.contains("is a receiver listening there?") == true, "\(e?.message ?? "")")
        #expect(e?.hint?.contains("devstream receive --listen \(endpoint)") == true, "\(e?.hint ?? "")")
    }

    @Test func noRoomForTheOutput() {
        let e = #expect(throws: TransferError.self) { try FileSink.checkFreeSpace(path: "/tmp/hint-test-out", size: UInt64.max) }
        expectLibraryWording(e, flag: "--output")
        #expect(e?.message.contains("larger file system") == true)
    }
}

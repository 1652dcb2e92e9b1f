import Testing
import Foundation
import Glibc
import DSTestSupport
@testable import DeviceStream
import DSSimulation
import DSSupport
import DSWire
import DSCodec
import DSRing
import DSTransport
import DSDevices
import DSScheduler

/// A CA, certificates it issued, and one from another CA, made with the `openssl` CLI.
final class TestPKI: @unchecked Sendable {
    let dir: String
    init() throws {
        dir = "/tmp/tls-pki-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o700)
        try ca("ca"); try ca("ca2")
        try cert("server", by: "ca"); try cert("client", by: "ca"); try cert("stranger", by: "ca2")
    }
    deinit { _ = try? FileManager.default.removeItem(atPath: dir) }

    func path(_ name: String, _ ext: String) -> String { "\(dir)/\(name).\(ext)" }
    /// `--tls-cert/--tls-key/--tls-ca` for `name`'s certificate, trusting `ca`.
    func flags(_ name: String, trusting ca: String = "ca") -> [String] {
        ["--tls-cert", path(name, "pem"), "--tls-key", path(name, "key"), "--tls-ca", path(ca, "pem")]
    }

    private func openssl(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw PKIError.openssl(args.joined(separator: " ")) }
    }
    enum PKIError: Error { case openssl(String) }

    private func ca(_ name: String) throws {
        try openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", path(name, "key"), "-out", path(name, "pem"), "-days", "2", "-subj", "/CN=\(name)"])
    }
    private func cert(_ name: String, by ca: String) throws {
        try openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", path(name, "key"), "-out", path(name, "csr"), "-subj", "/CN=\(name)"])
        try openssl(["x509", "-req", "-in", path(name, "csr"), "-CA", path(ca, "pem"), "-CAkey", path(ca, "key"),
                     "-CAcreateserial", "-out", path(name, "pem"), "-days", "1"])
    }
}

func tlsTmpPathE2E(_ name: String) -> String {
    "/tmp/tls-e2e-\(getpid())-\(UInt32.random(in: 0...UInt32.max))-\(name)"
}

@Suite(.serialized) struct TLSTests {
    func file(_ bytes: Int, seed: UInt64) -> String {
        let p = "/tmp/tls-e2e-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        writeFile(p, testData(bytes, seed: seed))
        return p
    }

    @Test func x509MutualRoundTripThroughTheCLI() throws {
        let pki = try TestPKI()
        let src = file(4_000_000, seed: 11), out = src + ".out"
        defer { unlink(src); unlink(out) }
        let (recv, addr) = try CLI.receiver(["--output", out, "--json"] + pki.flags("server"))
        let sent = try CLI.run(["send", src, "--to", addr, "--connections", "3", "--json"] + pki.flags("client"))
        let got = recv.wait()
        #expect(sent.status == 0, "\(sent.stderr)")
        #expect(got.status == 0, "\(got.stderr)")
        #expect(CLI.json(sent.stdout)?["protection"] as? String == "tls-x509" && CLI.json(got.stdout)?["protection"] as? String == "tls-x509",
                "\(sent.stdout) \(got.stdout)")
        #expect(CLI.json(sent.stdout)?["xxh3"] as? String == CLI.json(got.stdout)?["xxh3"] as? String)
        #expect(readFile(out) == readFile(src))
    }

    @Test func pskRoundTripThroughTheCLI() throws {
        let src = file(3_000_000, seed: 12), out = src + ".out", key = src + ".psk"
        defer { unlink(src); unlink(out); unlink(key) }
        writePrivateFile(key, Array("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n".utf8))
        let (recv, addr) = try CLI.receiver(["--output", out, "--psk-file", key])
        let sent = try CLI.run(["send", src, "--to", addr, "--connections", "4", "--psk-file", key])
        let got = recv.wait()
        #expect(sent.status == 0 && got.status == 0, "\(sent.stderr) \(got.stderr)")
        #expect(readFile(out) == readFile(src))
    }

    /// A certificate from another CA is refused by the receiver; a client that trusts another
    /// CA refuses the receiver's. The sender exits non-zero and says why; the receiver turns it
    /// away with a warning and goes on waiting, and takes the right sender that follows.
    @Test(arguments: [("stranger", "ca"), ("client", "ca2")])
    func certificateFromAnotherCAIsRefused(cert: String, trusting ca: String) throws {
        let pki = try TestPKI()
        let src = file(500_000, seed: 13), out = src + ".out"
        defer { unlink(src); unlink(out) }
        let (recv, addr) = try CLI.receiver(["--output", out] + pki.flags("server"))
        let sent = try CLI.run(["send", src, "--to", addr] + pki.flags(cert, trusting: ca))
        #expect(sent.status != 0)
        #expect(!exists(out) && !exists(out + ".partial"))
        // The flag is on the hint line; the error line says it in library terms.
        let lines = sent.stderr.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("devstream: hint: ") && $0.contains("--tls-ca") }, "\(sent.stderr)")
        #expect(lines.contains { $0.hasPrefix("devstream: error: ") && !$0.contains("--") }, "\(sent.stderr)")
        let right = try CLI.run(["send", src, "--to", addr] + pki.flags("client"))
        let got = recv.wait()
        #expect(right.status == 0 && got.status == 0, "\(right.stderr) \(got.stderr)")
        #expect(got.stderr.contains("warning: turned away the TLS handshake"), "\(got.stderr)")
        #expect(readFile(out) == readFile(src))
    }

    /// A TLS client that presents no certificate (openssl s_client) does not get in; the
    /// receiver says why in a warning and takes the real sender after it.
    @Test func clientWithoutCertificateIsRefused() throws {
        let pki = try TestPKI()
        let src = file(100_000, seed: 17), out = src + ".out"
        defer { unlink(src); unlink(out) }
        let (recv, addr) = try CLI.receiver(["--output", out, "--timeout", "5s"] + pki.flags("server"))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = ["s_client", "-connect", addr, "-tls1_3", "-CAfile", pki.path("ca", "pem")]
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        #expect(!exists(out) && !exists(out + ".partial"))
        let right = try CLI.run(["send", src, "--to", addr] + pki.flags("client"))
        let got = recv.wait()
        #expect(right.status == 0 && got.status == 0, "\(right.stderr) \(got.stderr)")
        #expect(got.stderr.contains("must present a certificate"), "\(got.stderr)")
    }

    /// No security options and no `--insecure`: `send` and `migrate` refuse before any
    /// connection is tried, loopback included, and say how to get a key.
    @Test func sendAndMigrateNeedSecurityOrInsecure() throws {
        let src = file(1000, seed: 14)
        defer { unlink(src) }
        for to in ["127.0.0.1:7000", "192.0.2.1:7000"] {
            let start = Date()
            let r = try CLI.run(["send", src, "--to", to, "--timeout", "20s"])
            #expect(r.status != 0)
            #expect(r.stderr.contains("without security options") && r.stderr.contains("--insecure")
                    && r.stderr.contains("--psk-file"), "\(r.stderr)")
            #expect(Date().timeIntervalSince(start) < 5)
            let m = try CLI.run(["migrate", "--device", "sim:size=1M", "--to", to])
            #expect(m.status != 0 && m.stderr.contains("without security options") && m.stderr.contains("--insecure"), "\(m.stderr)")
        }
        // --insecure and a key contradict each other.
        let both = try CLI.run(["send", src, "--to", "127.0.0.1:7000", "--insecure"] + CLI.psk)
        #expect(both.status != 0 && both.stderr.contains("--insecure turns security off"), "\(both.stderr)")
    }

    /// `receive` without security options makes a one-time key (0600) in its working directory,
    /// says where on stderr, and the sender that reads it gets in; the file is gone afterwards.
    @Test func receiveMakesAOneTimeKey() throws {
        let src = file(2_000_000, seed: 15), out = src + ".out"
        let dir = "/tmp/tls-cwd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o700)
        defer { unlink(src); unlink(out); _ = try? FileManager.default.removeItem(atPath: dir) }
        let (recv, addr) = try CLI.receiver(["--output", out, "--json"], cwd: dir)
        let port = addr.split(separator: ":").last!
        let key = "\(dir)/devstream-\(port).key"
        var st = stat()
        #expect(stat(key, &st) == 0 && st.st_mode & 0o777 == 0o600, "mode \(String(st.st_mode & 0o777, radix: 8))")
        // Without the key: refused before connecting. With it: the transfer completes.
        let keyless = try CLI.run(["send", src, "--to", addr])
        #expect(keyless.status != 0)
        let sent = try CLI.run(["send", src, "--to", addr, "--json", "--psk-file", key])
        let got = recv.wait()
        #expect(sent.status == 0 && got.status == 0, "\(sent.stderr) \(got.stderr)")
        #expect(got.stderr.contains("made a one-time pre-shared key in \(key)") && got.stderr.contains("--psk-file \(key)"), "\(got.stderr)")
        #expect(readFile(out) == readFile(src))
        #expect(!exists(key), "the one-time key is removed when the receive ends")
        #expect(CLI.json(got.stdout)?["protection"] as? String == "tls-psk", "\(got.stdout)")
        #expect(CLI.json(sent.stdout)?["protection"] as? String == "tls-psk", "\(sent.stdout)")
    }

    /// `--key-out FILE` picks where the one-time key goes (here for a migration), and is refused
    /// beside a key of one's own or --insecure.
    @Test func receiveKeyOut() throws {
        let key = tlsTmpPathE2E("key-out")
        defer { unlink(key) }
        let (recv, addr) = try CLI.receiver(["--device", "sim:size=4M", "--key-out", key])
        #expect(try SecurityOptions.pskFile(key) != SecurityOptions(.psk(key: [])))
        let m = try CLI.run(["migrate", "--device", "sim:size=4M,dirty-rate=1M", "--to", addr, "--psk-file", key,
                             "--on-nonconvergence", "switchover"])
        let got = recv.wait()
        #expect(m.status == 0 && got.status == 0, "\(m.stderr) \(got.stderr)")
        #expect(got.stderr.contains("devstream migrate ... --psk-file \(key)"), "\(got.stderr)")
        #expect(!exists(key))
        for extra in [CLI.psk, ["--insecure"]] {
            let r = try CLI.run(["receive", "--listen", "127.0.0.1:0", "--output", "/dev/null", "--key-out", key] + extra)
            #expect(r.status != 0 && r.stderr.contains("--key-out makes a one-time key"), "\(r.stderr)")
        }
        // An unwritable place for the key: the receive fails before it takes a session.
        let bad = try CLI.run(["receive", "--listen", "127.0.0.1:0", "--output", "/dev/null", "--key-out", "/proc/no-such-dir/key"])
        #expect(bad.status != 0 && bad.stderr.contains("cannot create the key file") && bad.stderr.contains("no key, no session"), "\(bad.stderr)")
    }

    /// A key file others can read, or one that is not a hex key (here 40 newlines), is refused
    /// by every command before anything listens or connects, with the fix in the message.
    @Test func weakKeyFilesAreRefused() throws {
        let key = tlsTmpPathE2E("weak-key")
        defer { unlink(key) }
        let src = file(1000, seed: 18)
        defer { unlink(src) }
        writePrivateFile(key, Array((String(repeating: "ab", count: 32) + "\n").utf8))
        chmod(key, 0o644)
        for args in [["send", src, "--to", "127.0.0.1:9"], ["receive", "--listen", "127.0.0.1:0", "--output", "/dev/null"],
                     ["migrate", "--device", "sim:size=1M", "--to", "127.0.0.1:9"]] {
            let r = try CLI.run(args + ["--psk-file", key])
            #expect(r.status != 0 && r.stderr.contains("mode 644") && r.stderr.contains("chmod 600 \(key)"), "\(r.stderr)")
            #expect(!r.stdout.contains("listening on"))
        }
        writePrivateFile(key, [UInt8](repeating: 0x0a, count: 40))
        let r = try CLI.run(["send", src, "--to", "127.0.0.1:9", "--psk-file", key])
        #expect(r.status != 0 && r.stderr.contains("holds 0 hex digits"), "\(r.stderr)")
    }

    /// `--insecure` at both ends: plaintext on loopback, by explicit choice, and the reports say so.
    @Test func insecureAtBothEnds() throws {
        let src = file(500_000, seed: 16), out = src + ".out"
        defer { unlink(src); unlink(out) }
        let (recv, addr) = try CLI.receiver(["--output", out, "--json", "--insecure"])
        let sent = try CLI.run(["send", src, "--to", addr, "--json", "--insecure"])
        let got = recv.wait()
        #expect(sent.status == 0 && got.status == 0, "\(sent.stderr) \(got.stderr)")
        #expect(!got.stderr.contains("one-time"))
        #expect(CLI.json(sent.stdout)?["protection"] as? String == "insecure", "\(sent.stdout)")
        #expect(CLI.json(got.stdout)?["protection"] as? String == "insecure", "\(got.stdout)")
        #expect(sent.stderr.contains(", insecure), xxh3"), "\(sent.stderr)")
    }

    /// A live migration over PSK, N = 3: every channel (and channel 0's two-way control
    /// traffic) runs through TLS.
    @Test func migrationOverPSK() throws {
        let src = try SimulatedDevice(size: 16 << 20, dirtyRate: 8 << 20, profile: .mixed, seed: 5)
        let dst = try SimulatedDevice(destinationSize: 16 << 20)
        defer { src.close(); dst.close() }
        var config = migrationConfig(connections: 3)
        config.transfer.security = SecurityOptions(.psk(key: [UInt8](repeating: 0x5A, count: 32)))
        let (s, d) = try runMigration([src], [dst], config)
        #expect(s.completed, "\(s.error?.message ?? "")")
        #expect(d.completed, "\(d.error?.message ?? "")")
        #expect(try src.digest() == dst.digest())
        #expect(s.devices[0].sourceDigest == s.devices[0].destinationDigest)
        #expect(s.protection == .tlsPSK && d.protection == .tlsPSK)
        #expect(s.jsonObject["protection"] as? String == "tls-psk")
    }

    /// The destination's failure reaches the source through TLS (an encrypted farewell).
    @Test func migrationWithWrongPSKFailsAtBothEnds() throws {
        let src = try SimulatedDevice(size: 4 << 20, dirtyRate: 0, profile: .mixed, seed: 6)
        let dst = try SimulatedDevice(destinationSize: 4 << 20)
        defer { src.close(); dst.close() }
        var config = migrationConfig(connections: 2)
        config.transfer.security = SecurityOptions(.psk(key: [UInt8](repeating: 1, count: 32)))
        var destOptions = config.transfer
        destOptions.security = SecurityOptions(.psk(key: [UInt8](repeating: 2, count: 32)))
        let destination = try MigrationDestination(listen: Endpoint(host: "127.0.0.1", port: 0), devices: [dst], options: destOptions, warn: { _ in })
        nonisolated(unsafe) var d: MigrationReport?
        // The destination turns the source away and waits on for another, here for a second.
        let t = try OSThread(name: "ds-test") { d = destination.run(acceptTimeout: .seconds(1)) }
        let s = MigrationSource(devices: [src], configuration: config, warn: { _ in }).migrate(to: destination.listener.endpoint)
        t.join()
        #expect(!s.completed && d?.completed == false)
        #expect(d?.error?.code == .timeout && d?.error?.message.contains("pre-shared keys differ") == true, "\(d?.error?.message ?? "")")
        // The messages say what failed in library terms; the hints name the CLI's flag.
        #expect(s.error?.message.contains("--") == false && s.error?.hint?.contains("--psk-file") == true, "\(s.error?.description ?? "")")
        #expect(d?.error?.message.contains("--") == false && d?.error?.hint?.contains("--psk-file") == true, "\(d?.error?.description ?? "")")
    }
}

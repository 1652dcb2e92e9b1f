import Testing
import Foundation
import Glibc
import DSNetLab
import DSTestSupport

/// Migrations between two processes in two network namespaces joined by a shaped veth pair
/// (made by the test; needs root and iproute2, which `.ci/run` runs with). The destination's
/// devices are made from specs. Timing targets live in `stream-bench migration --link`; here
/// the bytes and the protocol are checked over a real link.
@Suite(.serialized) struct LinkMigrationTests {
    @Test(arguments: [NetLink.Shape.gigabit, NetLink.Shape.tenGigabit])
    func migratesAcrossNamespaces(shape: NetLink.Shape) throws {
        let link = try NetLink(shape)
        defer { link.close() }
        let (r, endpoint) = try CLI.receiver(["--device", "sim:size=64M", "--timeout", "10s", "--json", "--insecure"],
                                             host: link.destinationAddress, wrapper: link.inDestination([]))
        let s = try CLI.start(["migrate", "--device", "sim:size=64M,dirty-rate=4M,seed=9", "--to", endpoint,
                               "--timeout", "10s", "--deadline", "30s", "--json", "--insecure"], wrapper: link.inSource([]))
        let src = s.wait()
        let dst = r.wait()
        #expect(src.status == 0, "\(link.description): \(src.stderr)")
        #expect(dst.status == 0, "\(link.description): \(dst.stderr)")
        guard let j = CLI.json(src.stdout), let devices = j["devices"] as? [[String: Any]], let d = devices.first else {
            Issue.record("no JSON report: \(src.stdout)"); return
        }
        #expect(j["status"] as? String == "completed")
        #expect(d["source_xxh3"] as? String != nil)
        #expect(d["source_xxh3"] as? String == d["destination_xxh3"] as? String)
        // The round trip was measured over the link, not taken from the destination's setup.
        #expect((j["round_trip_ms"] as? Double ?? 0) > 0)
    }

    @Test func theLinkReallyCarriesTheTraffic() throws {
        // The destination listens only inside its namespace: loopback in the source's namespace
        // has nothing there, so a completed migration must have crossed the veth pair.
        let link = try NetLink(.veth)
        defer { link.close() }
        let (r, endpoint) = try CLI.receiver(["--device", "sim:size=8M", "--timeout", "5s", "--insecure"],
                                             host: link.destinationAddress, wrapper: link.inDestination([]))
        let port = endpoint.split(separator: ":").last!
        let wrong = try CLI.run(["migrate", "--device", "sim:size=8M", "--to", "127.0.0.1:\(port)", "--timeout", "3s", "--insecure"],
                                env: [:], wrapper: link.inSource([]))
        #expect(wrong.status != 0)
        #expect(wrong.stderr.contains("refused"), "\(wrong.stderr)")
        let right = try CLI.run(["migrate", "--device", "sim:size=8M", "--to", endpoint, "--timeout", "5s", "--insecure"], wrapper: link.inSource([]))
        #expect(right.status == 0, "\(right.stderr)")
        _ = r.wait()
    }

    @Test func migratesOverTLSWithAPreSharedKey() throws {
        // Off loopback, the normal way: encrypted and authenticated, no --insecure.
        let link = try NetLink(.gigabit)
        defer { link.close() }
        let psk = "/tmp/ds-link-psk-\(getpid())"
        defer { unlink(psk) }
        writePrivateFile(psk, Array(String(repeating: "5a", count: 32).utf8))
        let (r, endpoint) = try CLI.receiver(["--device", "sim:size=32M", "--timeout", "10s", "--psk-file", psk],
                                             host: link.destinationAddress, wrapper: link.inDestination([]))
        let s = try CLI.run(["migrate", "--device", "sim:size=32M,dirty-rate=2M,seed=4", "--to", endpoint,
                             "--timeout", "10s", "--psk-file", psk, "--json"], wrapper: link.inSource([]))
        let d = r.wait()
        #expect(s.status == 0, "\(s.stderr)")
        #expect(d.status == 0, "\(d.stderr)")
        let j = CLI.json(s.stdout)
        let dev = (j?["devices"] as? [[String: Any]])?.first
        #expect(dev?["source_xxh3"] as? String != nil && dev?["source_xxh3"] as? String == dev?["destination_xxh3"] as? String)
        // Without a key or --insecure, plaintext to this address is refused before connecting.
        let plain = try CLI.run(["migrate", "--device", "sim:size=1M", "--to", endpoint], wrapper: link.inSource([]))
        #expect(plain.status != 0)
        #expect(plain.stderr.contains("--insecure"), "\(plain.stderr)")
    }
}

import Testing
import Foundation
import Glibc
import DSNetLab

/// Migrations between two processes in two network namespaces joined by a shaped veth pair
/// (made by the test; needs root and iproute2, which `.ci/run` runs with). The destination's
/// devices are made from specs. Timing targets live in `stream-bench migration --link`; here
/// the bytes and the protocol are checked over a real link.
@Suite(.serialized) struct LinkMigrationTests {
    @Test(arguments: [NetLink.Shape.gigabit, NetLink.Shape.tenGigabit])
    func migratesAcrossNamespaces(shape: NetLink.Shape) throws {
        let link = try NetLink(shape)
        defer { link.close() }
        let (r, endpoint) = try CLI.receiver(["--device", "sim:size=64M", "--timeout", "10s", "--json"],
                                             host: link.destinationAddress, wrapper: link.inDestination([]))
        let s = try CLI.start(["migrate", "--device", "sim:size=64M,dirty-rate=4M,seed=9", "--to", endpoint,
                               "--timeout", "10s", "--deadline", "30s", "--json"], wrapper: link.inSource([]))
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
        let (r, endpoint) = try CLI.receiver(["--device", "sim:size=8M", "--timeout", "5s"],
                                             host: link.destinationAddress, wrapper: link.inDestination([]))
        let port = endpoint.split(separator: ":").last!
        let wrong = try CLI.run(["migrate", "--device", "sim:size=8M", "--to", "127.0.0.1:\(port)", "--timeout", "3s"],
                                env: [:], wrapper: link.inSource([]))
        #expect(wrong.status != 0)
        #expect(wrong.stderr.contains("refused"), "\(wrong.stderr)")
        let right = try CLI.run(["migrate", "--device", "sim:size=8M", "--to", endpoint, "--timeout", "5s"], wrapper: link.inSource([]))
        #expect(right.status == 0, "\(right.stderr)")
        _ = r.wait()
    }
}

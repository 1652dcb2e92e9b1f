import Testing
import Foundation
@testable import DeviceStream
import DSCLISupport
import DSSupport
import DSWire
import DSCodec
import DSRing
import DSTransport
import DSDevices
import DSScheduler

/// `--json` output is total: a peer's NaN or infinity becomes null, never a crash.
@Suite struct ReportJSONTests {
    func parse(_ s: String) -> [String: Any]? {
        try? JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any]
    }

    @Test func nonFiniteNumbersBecomeNull() throws {
        let text = JSONText.encode(["nan": Double.nan, "inf": Double.infinity, "ninf": -Double.infinity,
                                    "ok": 1.5, "whole": 200.0, "n": 7, "u": UInt64.max, "b": true,
                                    "s": "a\"b\\c\n\u{1b}[2J", "none": NSNullLike.null,
                                    "list": [Double.nan, 2.0] as [Any], "nested": ["x": Float.infinity] as [String: Any]])
        let o = try #require(parse(text), "not valid JSON: \(text)")
        #expect(o["nan"] is NSNull && o["inf"] is NSNull && o["ninf"] is NSNull && o["none"] is NSNull)
        #expect(o["ok"] as? Double == 1.5 && o["whole"] as? Double == 200 && o["n"] as? Int == 7)
        #expect(o["u"] as? UInt64 == UInt64.max)
        #expect(o["b"] as? Bool == true)
        #expect(o["s"] as? String == "a\"b\\c\n\u{1b}[2J")
        #expect(!text.contains("\u{1b}"), "control characters are escaped in the JSON text")
        #expect((o["list"] as? [Any])?.first is NSNull)
        #expect((o["nested"] as? [String: Any])?["x"] is NSNull)
        #expect(text.hasPrefix("{\"b\":true,"), "sorted keys: \(text)")
    }

    /// A destination that reports NaN or infinity as its load rate (loadStats) and timings.
    @Test func migrationReportWithPeerNaN() throws {
        var r = MigrationReport()
        r.receiverLoadRate = .nan
        r.rounds = [IterationReport(iteration: 1, sentBytes: 1, wireBytes: 1, dirtyBytes: 0, bandwidth: .infinity,
                                    predictedDowntime: nil, duration: .milliseconds(1))]
        let text = JSONText.encode(r.jsonObject)
        let o = try #require(parse(text), "not valid JSON: \(text)")
        #expect(o["receiver_load_rate_bytes_per_sec"] is NSNull)
        #expect(((o["rounds"] as? [[String: Any]])?.first?["bandwidth_bytes_per_sec"]) is NSNull)
    }
}

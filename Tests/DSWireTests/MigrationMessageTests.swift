import Testing
import DSWire

/// Every migration payload round-trips, and every truncation of it is refused with an error
/// (never a trap): these bytes come from the network.
@Suite struct MigrationMessageTests {
    static let header = DeviceHeader(kind: .orderedStream, size: 0, flags: 5, spec: "vfio-emu:size=1M")
    static let totals = DeviceTotals(chunksPerChannel: [3, 0, 7], bytes: 123_456, digest: 0xfeed)
    static let summary = MigrationSummary(downtime: .microseconds(12_345), expectedDowntime: nil, downtimeLimit: .milliseconds(300),
                                          iterations: 4, precopyBytes: 1 << 30, stopcopyBytes: 4096, sourceDigests: [1, nil, 3])

    /// Each message's bytes, with a decoder that returns it as `any Equatable` for comparison.
    static let cases: [(String, [UInt8], @Sendable ([UInt8]) throws -> AnyHashable)] = [
        ("header", header.encoded(), { AnyHashable(try DeviceHeader.decode($0).spec) }),
        ("totals", totals.encoded(), { AnyHashable(try DeviceTotals.decode($0, channels: 3).chunksPerChannel) }),
        ("accept", SetupAccept(setupMilliseconds: 2.5, resumeEstimateMilliseconds: 1).encoded(),
         { AnyHashable(try SetupAccept.decodeIfPresent($0)!.setupMilliseconds) }),
        ("loadStats", LoadStats(loadedBytes: 10, bytesPerSecond: 20).encoded(), { AnyHashable(try LoadStats.decode($0).bytesPerSecond) }),
        ("loaded", Loaded(loadMilliseconds: 3, validateMilliseconds: 4).encoded(), { AnyHashable(try Loaded.decode($0).validateMilliseconds) }),
        ("resumed", Resumed(commitToRunningMilliseconds: 5, resumeMilliseconds: 6).encoded(), { AnyHashable(try Resumed.decode($0).resumeMilliseconds) }),
        ("digests", DeviceDigests([nil, 9]).encoded(), { AnyHashable(try DeviceDigests.decode($0).digests) }),
        ("summary", summary.encoded(), { AnyHashable(try MigrationSummary.decode($0).sourceDigests) }),
    ]

    @Test func roundTrips() throws {
        #expect(try DeviceHeader.decode(Self.header.encoded()) == Self.header)
        #expect(try DeviceTotals.decode(Self.totals.encoded(), channels: 3) == Self.totals)
        #expect(try MigrationSummary.decode(Self.summary.encoded()) == Self.summary)
        let accept = SetupAccept(setupMilliseconds: 2.5, resumeEstimateMilliseconds: 1)
        #expect(try SetupAccept.decodeIfPresent(accept.encoded()) == accept)
        #expect(try SetupAccept.decodeIfPresent([]) == nil)
        #expect(try LoadStats.decode(LoadStats(loadedBytes: 1, bytesPerSecond: 2).encoded()) == LoadStats(loadedBytes: 1, bytesPerSecond: 2))
        #expect(try Loaded.decode(Loaded(loadMilliseconds: 1, validateMilliseconds: 2).encoded()) == Loaded(loadMilliseconds: 1, validateMilliseconds: 2))
        #expect(try Resumed.decode(Resumed(commitToRunningMilliseconds: 1, resumeMilliseconds: 2).encoded())
                == Resumed(commitToRunningMilliseconds: 1, resumeMilliseconds: 2))
        #expect(try DeviceDigests.decode(DeviceDigests([nil, 9]).encoded()) == DeviceDigests([nil, 9]))
    }

    @Test func everyTruncationIsRefused() throws {
        for (name, bytes, decode) in Self.cases {
            _ = try decode(bytes)
            for n in 0..<bytes.count where !(name == "accept" && n == 0) {
                #expect(throws: WireError.self, "\(name) cut to \(n) bytes") { try decode(Array(bytes.prefix(n))) }
            }
        }
    }

    @Test func boundsAreChecked() {
        var badKind = Self.header.encoded(); badKind[0] = 2
        #expect(throws: WireError.malformed("unknown device kind 2")) { try DeviceHeader.decode(badKind) }
        #expect(throws: WireError.self) { try DeviceTotals.decode(Self.totals.encoded(), channels: 2) }
        var many: [UInt8] = [0xff, 0xff]  // 65535 digests
        many += [UInt8](repeating: 0, count: 9 * 300)
        #expect(throws: WireError.self) { try DeviceDigests.decode(many) }
        var huge = DeviceHeader(kind: .addressable, size: 1, flags: 0, spec: "").encoded()
        for i in 1...8 { huge[i] = 0xff }
        #expect(throws: WireError.self) { try DeviceHeader.decode(huge) }
    }

    @Test func nonFiniteRatesAreNoSample() {
        #expect(LoadStats(loadedBytes: 1, bytesPerSecond: .nan).rateSample == nil)
        #expect(LoadStats(loadedBytes: 1, bytesPerSecond: -.infinity).rateSample == nil)
        #expect(LoadStats(loadedBytes: 1, bytesPerSecond: 0).rateSample == nil)
        #expect(LoadStats(loadedBytes: 1, bytesPerSecond: 5).rateSample == 5)
    }

    @Test func deviceKindNamesItsFrame() {
        #expect(DeviceKind.addressable.frameType == .data)
        #expect(DeviceKind.orderedStream.frameType == .streamData)
    }
}

import Testing
import DSWire
import DSSupport

/// The extent table of a `pages` frame: every malformed table is refused before anything uses
/// it, with an error that says what is wrong.
@Suite struct ExtentTableTests {
    /// A payload: the table for `extents`, then `data` bytes (by default exactly their lengths).
    static func payload(_ extents: [(UInt64, UInt32)], dataBytes: Int? = nil, count: Int? = nil, reserved: UInt16 = 0) -> [UInt8] {
        var b: [UInt8] = []
        b.appendLE(UInt16(count ?? extents.count))
        b.appendLE(reserved)
        for (o, l) in extents { b.appendLE(o); b.appendLE(l) }
        let n = dataBytes ?? extents.reduce(0) { $0 + Int($1.1) }
        b += (0..<n).map { UInt8(truncatingIfNeeded: $0) }
        return b
    }

    static func parse(_ b: [UInt8], size: UInt64 = 1 << 20) throws(WireError) -> [(UInt64, Int, UInt8)] {
        var out: [(UInt64, Int, UInt8)] = []
        var failure: WireError?
        b.withUnsafeBytes { p in
            do throws(WireError) {
                let view = try ExtentTable.parse(p, deviceSize: size)
                view.forEach { off, bytes in out.append((off, bytes.count, bytes.first ?? 0)) }
            } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    @Test func aGoodTableScattersItsBytesInOrder() throws {
        let b = Self.payload([(0, 4096), (8192, 4096), (1 << 19, 100)])
        let got = try Self.parse(b)
        #expect(got.map(\.0) == [0, 8192, 1 << 19])
        #expect(got.map(\.1) == [4096, 4096, 100])
        // The second extent's bytes start right after the first's.
        #expect(got[1].2 == UInt8(truncatingIfNeeded: 4096))
    }

    @Test func writerAndParserAgree() throws {
        var b = [UInt8](repeating: 0, count: ExtentTable.size(count: 2) + 12)
        b.withUnsafeMutableBytes { p in
            ExtentTable.writeHeader(count: 2, into: p)
            ExtentTable.writeEntry(0, offset: 4096, length: 8, into: p)
            ExtentTable.writeEntry(1, offset: 65536, length: 4, into: p)
        }
        #expect(try Self.parse(b).map(\.0) == [4096, 65536])
    }

    @Test(arguments: [
        ("overlapping", payload([(0, 8192), (4096, 4096)])),
        ("unsorted", payload([(8192, 4096), (0, 4096)])),
        ("out of range", payload([((1 << 20) - 100, 4096)])),
        ("offset past the end", payload([(UInt64.max - 10, 20)])),
        ("empty extent", payload([(0, 0)], dataBytes: 0)),
        ("bytes short", payload([(0, 4096)], dataBytes: 4000)),
        ("bytes over", payload([(0, 4096)], dataBytes: 5000)),
        ("no extents", payload([], dataBytes: 16)),
        ("too many extents", payload([(0, 1)], count: ExtentTable.maxExtents + 1)),
        ("reserved bytes", payload([(0, 1)], reserved: 7)),
        ("table cut short", payload([(0, 1), (4096, 1)], dataBytes: 0, count: 3)),
    ])
    func malformedTablesAreRefused(name: String, bytes: [UInt8]) {
        #expect(throws: WireError.self, "\(name)") { _ = try Self.parse(bytes) }
    }

    @Test func everyTruncationIsRefused() {
        let b = Self.payload([(0, 16), (64, 16)])
        for n in 0..<b.count { #expect(throws: WireError.self) { _ = try Self.parse(Array(b.prefix(n))) } }
    }
}

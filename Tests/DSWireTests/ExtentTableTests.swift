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

/// Chunks packed without their zero pages (`ExtentTable.packZeroPages`, a `data` frame with
/// `FrameFlags.zeroPages`): the packed chunk rebuilds the chunk exactly, and every malformed
/// packed table is refused with what is wrong.
@Suite struct PackedChunkTests {
    static let page = ExtentTable.page

    /// A chunk of `length` bytes whose whole pages listed in `zero` are zero; every other page
    /// (and a partial tail) holds non-zero bytes.
    static func chunk(_ length: Int, zero: Set<Int>) -> [UInt8] {
        (0..<length).map { i in zero.contains(i / page) && (i / page + 1) * page <= length ? 0 : UInt8(truncatingIfNeeded: i % 251 + 1) }
    }

    /// The non-zero runs of `chunk` (offset, length), a partial tail counted as data.
    static func runs(_ chunk: [UInt8]) -> [(Int, Int)] {
        var out: [(Int, Int)] = []
        var p = 0
        while p < chunk.count {
            let end = min(p + page, chunk.count)
            let zero = end - p == page && chunk[p..<end].allSatisfy { $0 == 0 }
            if !zero {
                if let last = out.last, last.0 + last.1 == p { out[out.count - 1].1 += end - p } else { out.append((p, end - p)) }
            }
            p = end
        }
        return out
    }

    /// Packs `chunk` in a buffer of the channel's slot size; nil when nothing was left out.
    static func pack(_ chunk: [UInt8]) -> [UInt8]? {
        var buf = chunk + [UInt8](repeating: 0xEE, count: WireLimits.compressBound(chunk.count) - chunk.count)
        let n = buf.withUnsafeMutableBytes { ExtentTable.packZeroPages($0, length: chunk.count) }
        return n.map { Array(buf[0..<$0]) }
    }

    static func parse(_ packed: [UInt8], chunkLength: Int) throws(WireError) -> [(UInt64, [UInt8])] {
        var out: [(UInt64, [UInt8])] = []
        var failure: WireError?
        packed.withUnsafeBytes { p in
            do throws(WireError) {
                try ExtentTable.parsePacked(p, chunkLength: UInt64(chunkLength)).forEach { off, bytes in out.append((off, Array(bytes))) }
            } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    static let shapes: [(Int, Set<Int>)] = {
        let page = 4096, whole = 16 * page, partial = 5 * page + 1000
        let none: Set<Int> = [], everyOther = Set(stride(from: 0, to: 16, by: 2)), all = Set(0..<16)
        return [
            (whole, none),                 // no zero page: nothing packed
            (whole, [0]),                  // the first page
            (whole, [15]),                 // the last page
            (whole, everyOther),
            (whole, all),                  // all zero: an empty table
            (whole, [3, 4, 5, 9]),
            (partial, [4]),                // a zero page before a partial tail
            (partial, [0, 1, 2, 3, 4]),    // only the partial tail is data
            (partial, [1]),
            (page, [0]),                   // a one-page chunk of zeros
            (page - 1, none),              // shorter than a page: never packed
        ]
    }()

    @Test(arguments: shapes)
    func aPackedChunkRebuildsTheChunk(length: Int, zero: Set<Int>) throws {
        let chunk = Self.chunk(length, zero: zero)
        let expected = Self.runs(chunk)
        guard let packed = Self.pack(chunk) else {
            #expect(expected.count == 1 && expected[0] == (0, length), "nil although \(length - expected.reduce(0) { $0 + $1.1 }) bytes are zero pages")
            return
        }
        let dataBytes = expected.reduce(0) { $0 + $1.1 }
        #expect(packed.count == dataBytes + ExtentTable.size(count: expected.count), "\(packed.count) bytes for \(expected.count) runs of \(dataBytes)")
        #expect(packed.count < length)
        let extents = try Self.parse(packed, chunkLength: length)
        #expect(extents.map { Int($0.0) } == expected.map { $0.0 } && extents.map { $0.1.count } == expected.map { $0.1 })
        var rebuilt = [UInt8](repeating: 0, count: length)
        for (off, bytes) in extents { rebuilt.replaceSubrange(Int(off)..<Int(off) + bytes.count, with: bytes) }
        #expect(rebuilt == chunk)
    }

    /// A packed table as a sender would write it: `data` bytes, the entries, the count, reserved.
    static func packed(_ extents: [(UInt64, UInt32)], dataBytes: Int? = nil, count: Int? = nil, reserved: UInt16 = 0) -> [UInt8] {
        var b = [UInt8](repeating: 7, count: dataBytes ?? extents.reduce(0) { $0 + Int($1.1) })
        for (o, l) in extents { b.appendLE(o); b.appendLE(l) }
        b.appendLE(UInt16(count ?? extents.count))
        b.appendLE(reserved)
        return b
    }

    static let malformed: [([UInt8], String)] = {
        typealias E = [(UInt64, UInt32)]
        let past: E = [(0, 4096), (65536 - 100, 200)], overlapping: E = [(0, 4096), (4000, 4096)]
        let unsorted: E = [(8192, 4096), (0, 4096)], empty: E = [(0, 4096), (8192, 0)], one: E = [(0, 4096)]
        let wrapping: E = [(UInt64.max - 10, 4096)]
        return [
            (packed(past), "outside the device"),                 // past the chunk
            (packed(overlapping), "overlaps or precedes"),
            (packed(unsorted), "overlaps or precedes"),
            (packed(empty), "is empty"),
            (packed(one, dataBytes: 4095), "add up to"),          // fewer bytes than the table says
            (packed(one, dataBytes: 4097), "add up to"),          // more bytes
            (packed(one, count: 5000), "extent count"),           // over maxExtents
            (packed(one, count: 400), "truncated"),               // a table longer than the payload
            (packed(one, reserved: 1), "reserved"),
            ([0, 0, 0], "truncated"),                             // no room for the count
            (packed(wrapping), "outside the device"),             // an offset that would wrap
        ]
    }()

    @Test(arguments: malformed)
    func aMalformedPackedTableIsRefused(payload: [UInt8], says: String) {
        do {
            _ = try Self.parse(payload, chunkLength: 65536)
            Issue.record("accepted a malformed packed table; expected an error saying '\(says)'")
        } catch {
            #expect(error.description.contains(says), "\(error.description)")
        }
    }

    /// The flag belongs to `data` frames only: on any other type the header is refused.
    @Test(arguments: [FrameType.streamData, .pages, .channelEnd])
    func theZeroPagesFlagIsForDataFramesOnly(type: FrameType) {
        var b = [UInt8](repeating: 0, count: FrameHeader.size)
        let raw: UInt32 = type.isData ? 100 : 0
        b.withUnsafeMutableBytes { FrameHeader(type: type, flags: .zeroPages, rawLength: raw, wireLength: raw).encode(into: $0) }
        #expect(throws: WireError.self) { try b.withUnsafeBytes { try FrameHeader.decode($0) } }
        b.withUnsafeMutableBytes { FrameHeader(type: .data, flags: .zeroPages, rawLength: 100, wireLength: 100).encode(into: $0) }
        #expect(throws: Never.self) { try b.withUnsafeBytes { try FrameHeader.decode($0) } }
    }
}

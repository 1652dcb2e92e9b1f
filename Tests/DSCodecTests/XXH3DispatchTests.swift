import Testing
import Foundation
import CXXHash

/// `devstream_xxh3_64bits` (Sources/CXXHash/xxh3_dispatch.c) must give libxxhash's `XXH3_64bits` on every
/// path: chunk checksums and device digests are compared with what the peer (or an older release,
/// or `xxhsum -H3`) computed with the library.
@Suite struct XXH3DispatchTests {
    /// Seeded bytes, with room to start them at any of 64 alignments.
    static let bytes: [UInt8] = {
        var s: UInt64 = 0x9E37_79B9_7F4A_7C15
        return (0..<(1 << 20) + 4096 + 64).map { _ in s ^= s << 13; s ^= s >> 7; s ^= s << 17; return UInt8(truncatingIfNeeded: s) }
    }()

    static func check(_ p: UnsafeRawPointer, _ n: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        let library = XXH3_64bits(p, n)
        #expect(devstream_xxh3_64bits(p, n) == library, "length \(n)", sourceLocation: sourceLocation)
        #expect(devstream_xxh3_64bits_path(p, n, 0) == library, "baseline path, length \(n)", sourceLocation: sourceLocation)
        #expect(devstream_xxh3_64bits_path(p, n, 1) == library, "AVX2 path, length \(n)", sourceLocation: sourceLocation)
    }

    @Test func everyLengthUpTo4100AgreesWithLibxxhash() {
        Self.bytes.withUnsafeBytes { b in
            for n in 0...4100 { Self.check(b.baseAddress!, n) }
        }
    }

    @Test(arguments: [241, 1024, 4096, 65536 + 7, 256 << 10, 1 << 20])
    func chunkSizesAgreeAtEveryAlignment(length: Int) {
        Self.bytes.withUnsafeBytes { b in
            for shift in 0..<64 { Self.check(b.baseAddress! + shift, length) }
        }
    }

    @Test func theKnownAnswerForNoBytes() {
        // XXH3-64 of the empty input, seed 0 (xxhash's test vectors).
        #expect(devstream_xxh3_64bits(nil, 0) == 0x2D06_8005_38D3_94C2)
    }

    /// Where the CPU has AVX2, the fast path is the one taken: otherwise the agreement above
    /// would test the baseline loop twice.
    @Test func theAVX2PathIsTakenWhereTheCPUHasIt() throws {
        let cpuinfo = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let flags = cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") } ?? ""
        let hasAVX2 = flags.split(separator: " ").contains("avx2")
        #expect(devstream_xxh3_uses_avx2() == (hasAVX2 ? 1 : 0))
    }
}

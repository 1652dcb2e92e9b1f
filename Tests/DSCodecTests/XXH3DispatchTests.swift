import Testing
import CXXHash
@testable import DSCodec

/// Seeded random bytes (CodecTests' `sample`), with room to start them at any of 64 alignments.
let xxh3TestBytes = sample("random", count: (1 << 20) + 4096 + 64)

/// `xxh3` runs libxxhash's dispatched XXH3 (AVX-512 or AVX2 where the CPU has them; see
/// Sources/CXXHash/shim.h). It must give the plain `XXH3_64bits` value on every input: chunk
/// checksums are compared with what the peer computed, and digests with `xxhsum -H3`.
/// (Which vector loop libxxhash picks is not visible from outside; the speed is measured in
/// stream-bench, not here.)
@Suite struct XXH3DispatchTests {
    static func check(_ p: UnsafeRawPointer, _ n: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(xxh3(UnsafeRawBufferPointer(start: p, count: n)) == XXH3_64bits(p, n), "length \(n)", sourceLocation: sourceLocation)
    }

    @Test func everyLengthUpTo4100AgreesWithThePlainFunction() {
        xxh3TestBytes.withUnsafeBytes { b in
            for n in 0...4100 { Self.check(b.baseAddress!, n) }
        }
    }

    @Test(arguments: [241, 1024, 4096, 65536 + 7, 256 << 10, 1 << 20])
    func chunkSizesAgreeAtEveryAlignment(length: Int) {
        xxh3TestBytes.withUnsafeBytes { b in
            for shift in 0..<64 { Self.check(b.baseAddress! + shift, length) }
        }
    }

    @Test func theKnownAnswerForNoBytes() {
        // XXH3-64 of the empty input, seed 0 (xxhash's test vectors).
        #expect(xxh3(UnsafeRawBufferPointer(start: nil, count: 0)) == 0x2D06_8005_38D3_94C2)
    }
}

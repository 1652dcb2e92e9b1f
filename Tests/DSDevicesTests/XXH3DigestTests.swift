import Testing
import CXXHash
import DSTestSupport
@testable import DSDevices

/// Device digests use libxxhash's dispatched XXH3 (Sources/CXXHash/shim.h), one-shot and
/// streaming; both must give the plain `XXH3_64bits` value, whatever the pieces.
@Suite struct XXH3DigestTests {
    static let bytes = testData((3 << 20) + 17, seed: 7)

    @Test(arguments: [0, 1, 240, 241, 1023, 4096, 1 << 20, (3 << 20) + 17])
    func oneShotAgreesWithThePlainFunction(length: Int) {
        Self.bytes.withUnsafeBytes { b in
            #expect(xxh3(b.baseAddress!, length) == XXH3_64bits(b.baseAddress!, length))
            #expect(xxh3(b.baseAddress! + 3, length - min(length, 3)) == XXH3_64bits(b.baseAddress! + 3, length - min(length, 3)))
        }
    }

    /// Pieces of 1 byte to 1 MiB (most of them odd sizes) give the one-shot value of the whole.
    @Test(arguments: [1, 7, 64, 255, 4096, 65537, 1 << 20])
    func streamingInPiecesAgreesWithOneShot(piece: Int) throws {
        let stream = try XXH3Stream()
        Self.bytes.withUnsafeBytes { b in
            let total = piece == 1 ? 100_000 : b.count  // a byte at a time: a shorter input
            for repeatRun in 0..<2 {  // and again after reset()
                stream.reset()
                var off = 0
                while off < total {
                    let n = min(piece, total - off)
                    stream.update(b.baseAddress! + off, n)
                    off += n
                }
                #expect(stream.digest == XXH3_64bits(b.baseAddress!, total), "run \(repeatRun)")
            }
        }
    }
}

import Testing
import DSWire
import DSSupport
@testable import DSCodec

/// Seeded test data across compressibility.
func sample(_ kind: String, count: Int, seed: UInt64 = 1) -> [UInt8] {
    var s = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
    switch kind {
    case "zeros": return [UInt8](repeating: 0, count: count)
    case "pattern": return (0..<count).map { UInt8(truncatingIfNeeded: $0 % 251) }
    case "floats":
        var out = [UInt8](); out.reserveCapacity(count + 4)
        var i = 0
        while out.count < count {
            let f = Float(sin(Double(i) * 0.001)); i += 1
            withUnsafeBytes(of: f) { out.append(contentsOf: $0) }
        }
        return Array(out[0..<count])
    default: return (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) }
    }
}

import Foundation

@Suite struct CodecTests {
    @Test(arguments: ["zeros", "pattern", "floats", "random"], [1, 100, 4096, 1 << 20])
    func roundTrip(kind: String, count: Int) throws {
        let raw = sample(kind, count: count)
        let enc = try ChunkEncoder(compression: true)
        var wire = [UInt8](repeating: 0, count: WireLimits.compressBound(count))
        let r = raw.withUnsafeBytes { src in wire.withUnsafeMutableBytes { enc.encode(src, into: $0) } }
        #expect(r.checksum == raw.withUnsafeBytes { xxh3($0) })
        if kind == "random" { #expect(!r.compressed) }         // does not shrink: goes raw
        if kind == "zeros" && count >= 4096 { #expect(r.compressed && r.wireLength < count / 50) }
        var out = [UInt8](repeating: 0xAA, count: count)
        if r.compressed {
            try wire.withUnsafeBytes { w in
                try out.withUnsafeMutableBytes {
                    try ChunkDecoder.decompress(UnsafeRawBufferPointer(rebasing: w[0..<r.wireLength]), rawLength: count,
                                                checksum: r.checksum, into: $0)
                }
            }
            #expect(out == raw)
        } else {
            #expect(r.wireLength == count)
            try raw.withUnsafeBytes { try ChunkDecoder.verify($0, checksum: r.checksum) }
        }
    }

    @Test func realFileRoundTrip() throws {
        // This test binary itself: real, mixed-compressibility bytes.
        let data = try Data(contentsOf: URL(fileURLWithPath: CommandLine.arguments[0]))
        let raw = [UInt8](data.prefix(1 << 20))
        let enc = try ChunkEncoder(compression: true, acceleration: 4)
        var wire = [UInt8](repeating: 0, count: WireLimits.compressBound(raw.count))
        let r = raw.withUnsafeBytes { src in wire.withUnsafeMutableBytes { enc.encode(src, into: $0) } }
        #expect(r.compressed)
        var out = [UInt8](repeating: 0, count: raw.count)
        try wire.withUnsafeBytes { w in try out.withUnsafeMutableBytes {
            try ChunkDecoder.decompress(UnsafeRawBufferPointer(rebasing: w[0..<r.wireLength]), rawLength: raw.count, checksum: r.checksum, into: $0)
        } }
        #expect(out == raw)
    }

    @Test func compressionOffSendsRaw() throws {
        let raw = sample("zeros", count: 65536)
        let enc = try ChunkEncoder(compression: false)
        var wire = [UInt8](repeating: 0, count: WireLimits.compressBound(raw.count))
        let r = raw.withUnsafeBytes { src in wire.withUnsafeMutableBytes { enc.encode(src, into: $0) } }
        #expect(!r.compressed && r.wireLength == 65536)
    }

    /// The LZ4 state is allocated with an error, never a trap, when memory runs out.
    @Test func encoderAllocationFailureThrows() {
        #expect(throws: Errno.noMemory) {
            try ResourceFaults(.memory).run { () throws(Errno) in _ = try ChunkEncoder(compression: true) }
        }
    }

    /// Malformed input for the decoder: every flipped byte, truncation, wrong lengths, garbage.
    @Test func malformedBlocksAreRejected() throws {
        let raw = sample("pattern", count: 8192)
        let enc = try ChunkEncoder(compression: true)
        var wire = [UInt8](repeating: 0, count: WireLimits.compressBound(raw.count))
        let r = raw.withUnsafeBytes { src in wire.withUnsafeMutableBytes { enc.encode(src, into: $0) } }
        #expect(r.compressed)
        let block = Array(wire[0..<r.wireLength])
        var out = [UInt8](repeating: 0, count: 8192)
        func decode(_ b: [UInt8], raw n: Int = 8192) throws {
            try b.withUnsafeBytes { w in
                try out.withUnsafeMutableBytes { o in
                    try ChunkDecoder.decompress(w, rawLength: n, checksum: r.checksum, into: o)
                }
            }
        }
        for i in 0..<block.count {
            var b = block; b[i] ^= 0x5A
            #expect(throws: ChunkDecodeError.self) { try decode(b) }
        }
        for n in [0, 1, block.count / 2, block.count - 1] {
            #expect(throws: ChunkDecodeError.self) { try decode(Array(block[0..<n])) }
        }
        #expect(throws: ChunkDecodeError.self) { try decode(block, raw: 8191) }
        #expect(throws: ChunkDecodeError.outputTooSmall(needed: 9000, capacity: 8192)) { try decode(block, raw: 9000) }
        for seed in 1...50 {
            let garbage = sample("random", count: 1 + Int(seed) * 37, seed: UInt64(seed))
            #expect(throws: ChunkDecodeError.self) { try decode(garbage) }
        }
    }

    @Test func digestIsOrderIndependentAndPositionBound() {
        var a = TransferDigest(), b = TransferDigest()
        a.add(index: 0, length: 10, checksum: 111); a.add(index: 1, length: 10, checksum: 222)
        b.add(index: 1, length: 10, checksum: 222); b.add(index: 0, length: 10, checksum: 111)
        #expect(a.value == b.value)
        var swapped = TransferDigest()
        swapped.add(index: 0, length: 10, checksum: 222); swapped.add(index: 1, length: 10, checksum: 111)
        #expect(swapped.value != a.value)
        var dropped = TransferDigest(); dropped.add(index: 0, length: 10, checksum: 111)
        #expect(dropped.value != a.value)
        var merged = TransferDigest(); var other = TransferDigest()
        merged.add(index: 0, length: 10, checksum: 111); other.add(index: 1, length: 10, checksum: 222)
        merged.merge(other)
        #expect(merged == a)
    }
}

internal import CLZ4
internal import CXXHash
import DSWire
import DSSupport

/// XXH3-64 of `bytes`: the value of libxxhash's `XXH3_64bits`, computed with the widest vector
/// loop the CPU has (`devstream_xxh3_64bits`, Sources/CXXHash/shim.h says why).
public func xxh3(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    devstream_xxh3_64bits(bytes.baseAddress, bytes.count)  // no bytes: XXH3 reads nothing
}

/// The result of encoding one chunk.
public struct EncodedChunk: Sendable, Equatable {
    /// True when the payload is an LZ4 block; false when the raw bytes go as they are.
    public var compressed: Bool
    /// Bytes on the wire (the LZ4 block's size, or the raw length).
    public var wireLength: Int
    /// XXH3-64 of the raw bytes.
    public var checksum: UInt64
}

/// An LZ4 block encoder with its own state, for one thread.
///
/// The LZ4 state has address identity, so it is allocated once and freed in `deinit`
/// (`LZ4_compress_fast_extState` re-initialises it per call; Debian's liblz4 does not export the
/// `_fastReset` variant). Not thread-safe: one encoder per compressing thread.
public final class ChunkEncoder {
    private let state: UnsafeMutableRawPointer
    /// LZ4 acceleration (1 = default; higher is faster and compresses less).
    public let acceleration: Int32
    /// When false, every chunk goes raw (`--compression none`).
    public let compressionEnabled: Bool

    /// - Throws: ENOMEM when the LZ4 state (`LZ4_sizeofState()` bytes, about 16 KiB) cannot be
    ///   allocated; never a trap.
    public init(compression: Bool, acceleration: Int = 1) throws(Errno) {
        state = try AlignedMemory.allocate(byteCount: Int(LZ4_sizeofState()), alignment: 16)
        self.acceleration = Int32(max(1, min(acceleration, 65537)))
        compressionEnabled = compression
    }

    deinit { AlignedMemory.free(state) }

    /// Hashes `raw` and, when compression is on, tries to compress it into `output`.
    ///
    /// A chunk that does not shrink is sent raw, from the read buffer, with no copy: the result
    /// says `compressed == false` and `output` is left untouched.
    /// - Parameter output: at least `WireLimits.compressBound(raw.count)` bytes, or less to only
    ///   accept results that fit (LZ4 then fails fast and the chunk goes raw).
    public func encode(_ raw: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> EncodedChunk {
        let checksum = xxh3(raw)
        guard compressionEnabled, raw.count > 0 else {
            return EncodedChunk(compressed: false, wireLength: raw.count, checksum: checksum)
        }
        // Only accept a block strictly smaller than the raw bytes.
        let limit = min(output.count, raw.count - 1)
        let n = limit <= 0 ? 0 : LZ4_compress_fast_extState(
            state, raw.baseAddress!.assumingMemoryBound(to: CChar.self),
            output.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(raw.count), Int32(limit), acceleration)
        if n > 0 && Int(n) < raw.count {
            return EncodedChunk(compressed: true, wireLength: Int(n), checksum: checksum)
        }
        return EncodedChunk(compressed: false, wireLength: raw.count, checksum: checksum)
    }
}

/// Why a received chunk was refused.
public enum ChunkDecodeError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `LZ4_decompress_safe` rejected the block or produced a length other than announced.
    case corruptBlock(expected: Int, got: Int32)
    /// The decoded bytes do not hash to the frame's checksum.
    case checksumMismatch(expected: UInt64, actual: UInt64)
    /// The output buffer is smaller than the frame's raw length.
    case outputTooSmall(needed: Int, capacity: Int)

    public var description: String {
        switch self {
        case .corruptBlock(let e, let g): "corrupt LZ4 block (expected \(e) bytes, decoder returned \(g))"
        case .checksumMismatch(let e, let a):
            "chunk checksum mismatch (expected \(Hex.digest(e)), got \(Hex.digest(a)))"
        case .outputTooSmall(let n, let c): "chunk of \(n) bytes does not fit a \(c)-byte buffer"
        }
    }
}

/// Decodes chunks received from the network. Stateless; safe from any thread.
public enum ChunkDecoder {
    /// Decodes an LZ4 block with `LZ4_decompress_safe` (the only decoder used on network bytes)
    /// into `output`, requiring exactly `rawLength` bytes out, then verifies the checksum.
    public static func decompress(_ wire: UnsafeRawBufferPointer, rawLength: Int, checksum: UInt64,
                                  into output: UnsafeMutableRawBufferPointer) throws(ChunkDecodeError) {
        guard rawLength <= output.count else { throw .outputTooSmall(needed: rawLength, capacity: output.count) }
        let n = LZ4_decompress_safe(wire.baseAddress!.assumingMemoryBound(to: CChar.self),
                                    output.baseAddress!.assumingMemoryBound(to: CChar.self),
                                    Int32(wire.count), Int32(rawLength))
        guard n == Int32(rawLength) else { throw .corruptBlock(expected: rawLength, got: n) }
        try verify(UnsafeRawBufferPointer(rebasing: output[0..<rawLength]), checksum: checksum)
    }

    /// Verifies that raw bytes hash to `checksum`.
    @inlinable public static func verify(_ raw: UnsafeRawBufferPointer, checksum: UInt64) throws(ChunkDecodeError) {
        let actual = xxh3(raw)
        guard actual == checksum else { throw .checksumMismatch(expected: checksum, actual: actual) }
    }
}

/// The transfer digest: one 64-bit value over all of a transfer's chunks, computed from the
/// per-chunk XXH3-64s so that N channels can add chunks in any order with O(1) memory.
///
/// digest = XXH3-64( sum over chunks of XXH3-64(index ‖ length ‖ chunk-xxh3)  ‖  chunk count  ‖  total bytes )
///
/// where `length` is the chunk's length and `chunk-xxh3` its frame's checksum: the XXH3-64 of
/// the frame's raw payload, which is the chunk itself or, for a chunk sent without its zero
/// pages, the packed chunk (the runs and their table, which fixes where every byte goes). So
/// the digest identifies the bytes together with how they were framed (chunk size, packing):
/// both ends agree on it, but two transfers of one file need not.
///
/// with the sum wrapping mod 2^64. Each chunk's contribution binds its position and length, so a
/// chunk moved, dropped, duplicated or changed changes the digest (barring a 64-bit collision).
/// Both ends compute it the same way; equal digests plus verified chunk checksums prove the
/// receiver holds the sender's bytes.
public struct TransferDigest: Sendable, Equatable {
    public private(set) var sum: UInt64 = 0
    public private(set) var chunks: UInt64 = 0
    public private(set) var bytes: UInt64 = 0
    public init() {}

    /// Adds chunk number `index` (offset / chunk size, or the sequence number).
    public mutating func add(index: UInt64, length: Int, checksum: UInt64) {
        var record: (UInt64, UInt64, UInt64) = (index.littleEndian, UInt64(length).littleEndian, checksum.littleEndian)
        sum &+= withUnsafeBytes(of: &record) { xxh3($0) }
        chunks += 1
        bytes += UInt64(length)
    }

    /// Merges another channel's accumulator.
    public mutating func merge(_ other: TransferDigest) {
        sum &+= other.sum
        chunks += other.chunks
        bytes += other.bytes
    }

    public var value: UInt64 {
        var record: (UInt64, UInt64, UInt64) = (sum.littleEndian, chunks.littleEndian, bytes.littleEndian)
        return withUnsafeBytes(of: &record) { xxh3($0) }
    }

    public static func hex(_ v: UInt64) -> String { Hex.digest(v) }
}

// The LZ4-plus-checksum decode path (`ChunkDecoder.decompress`), as a channel runs it on a
// compressed data frame whose header passed: 1 ≤ raw length, 1 ≤ wire length ≤ compressBound(raw).
//
// Input: [raw length u32][checksum u64][mode u8][LZ4 block ...]
//   raw length  taken modulo 1 MiB, plus 1 (the 16 MiB bound is the frame-header target's; a
//               smaller one keeps each run cheap);
//   mode & 3    the output buffer: 0, 3 exactly the raw length (the channel's case), 1 one byte
//               short, 2 with 64 bytes to spare (the decoder must still produce exactly raw length);
//   mode & 4    instead: the block bytes are raw data; the encoder's output must decode to them.
// The output buffer is allocated at its exact size for each run, so a write past it is an
// AddressSanitizer report.
import DSCodec
import DSWire
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLZ4(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let rawLength = Int(input.integer(UInt32.self) % (1 << 20)) + 1
    let checksum = input.integer(UInt64.self)
    let mode = input.u8()
    let wire = input.rest()
    if mode & 4 != 0 {
        roundTrip(wire, acceleration: Int(mode >> 3))
        return 0
    }
    guard wire.count >= 1, wire.count <= WireLimits.compressBound(rawLength) else { return 0 }
    let capacity = switch mode & 3 { case 1: rawLength - 1; case 2: rawLength + 64; default: rawLength }
    let output = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 1)
    defer { output.deallocate() }
    do throws(ChunkDecodeError) {
        try ChunkDecoder.decompress(wire, rawLength: rawLength, checksum: checksum, into: output)
        require(capacity >= rawLength, "decoded into a buffer smaller than the raw length")
        require(xxh3(UnsafeRawBufferPointer(rebasing: output[0..<rawLength])) == checksum, "checksum not verified")
    } catch {
        switch error {
        case .outputTooSmall(let needed, let have): require(needed == rawLength && have == capacity && have < needed, "\(error)")
        case .corruptBlock(let expected, let got): require(expected == rawLength && Int(got) != rawLength, "\(error)")
        case .checksumMismatch(let expected, let actual): require(expected == checksum && actual != checksum, "\(error)")
        }
        require(!error.description.isEmpty, "empty ChunkDecodeError description")
    }
    return 0
}

/// What one end encodes, the other decodes to the same bytes (or it goes raw, untouched).
private func roundTrip(_ raw: UnsafeRawBufferPointer, acceleration: Int) {
    guard raw.count >= 1 else { return }
    guard let encoder = try? ChunkEncoder(compression: true, acceleration: acceleration + 1) else { return }
    let block = UnsafeMutableRawBufferPointer.allocate(byteCount: WireLimits.compressBound(raw.count), alignment: 1)
    defer { block.deallocate() }
    let chunk = encoder.encode(raw, into: block)
    require(chunk.checksum == xxh3(raw), "encoder checksum")
    guard chunk.compressed else {
        require(chunk.wireLength == raw.count, "a raw chunk's wire length")
        return
    }
    require(chunk.wireLength >= 1 && chunk.wireLength < raw.count, "a compressed chunk that did not shrink")
    let output = UnsafeMutableRawBufferPointer.allocate(byteCount: raw.count, alignment: 1)
    defer { output.deallocate() }
    do throws(ChunkDecodeError) {
        try ChunkDecoder.decompress(UnsafeRawBufferPointer(rebasing: block[0..<chunk.wireLength]), rawLength: raw.count,
                                    checksum: chunk.checksum, into: output)
        require(output.elementsEqual(raw), "decoded bytes differ")
    } catch {
        require(false, "the decoder refused the encoder's block: \(error)")
    }
}

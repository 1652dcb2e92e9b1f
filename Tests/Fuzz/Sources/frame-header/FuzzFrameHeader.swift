// The frame header decoder (`FrameHeader.decode`, `checkLengths`) and, behind a header that
// passes, the control-payload decoder a receiver runs for its type.
//
// Input: a frame as it arrives (the 40-byte header, then a control frame's payload), then
// optionally the session it arrives in: [chunk size u16][channels u8], zero when absent. The
// chunk size bounds data frames in `checkLengths` (0: 16 MiB, else n × 256); the channel count is
// what a device-totals payload must match (0: the count the payload announces). Frames whose
// payload means one thing in a transfer and another in a migration are decoded both ways.
// Each input is tried twice: as it is (the header check must hold), and with the header check
// recomputed, so that mutations reach the type, flag, reserved-byte and length checks behind it.
import DSWire
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameHeader(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = FuzzInput(data, size)
    check(input.bytes)
    guard size >= FrameHeader.size else { return 0 }
    // The same bytes with a correct header check.
    var fixed = Array(input.bytes)
    fixed.withUnsafeMutableBytes { b in
        let check = UInt32(truncatingIfNeeded: fnv1a64(UnsafeRawBufferPointer(rebasing: b[0..<36])))
        b.storeBytes(of: check.littleEndian, toByteOffset: 36, as: UInt32.self)
    }
    fixed.withUnsafeBytes { check($0) }
    return 0
}

private func check(_ bytes: UnsafeRawBufferPointer) {
    let header: FrameHeader
    do throws(WireError) {
        header = try FrameHeader.decode(bytes)
    } catch {
        require(!error.description.isEmpty, "empty WireError description")
        return
    }
    // What decode promises: a known type, known flags, lengths within the absolute bounds.
    require(FrameFlags.known.isSuperset(of: header.flags), "unknown flags passed")
    if header.type.isData {
        require(header.rawLength >= 1 && Int(header.rawLength) <= WireLimits.maxChunkSize, "data raw length \(header.rawLength)")
        if header.flags.contains(.lz4) {
            require(header.wireLength >= 1 && Int(header.wireLength) <= WireLimits.compressBound(Int(header.rawLength)),
                    "lz4 wire length \(header.wireLength) for raw \(header.rawLength)")
        } else {
            require(header.wireLength == header.rawLength, "raw data wire length")
        }
    } else {
        require(!header.flags.contains(.lz4) && header.rawLength == header.wireLength
                && Int(header.wireLength) <= WireLimits.maxControlPayload, "control lengths")
    }
    require(bytes.loadUnaligned(fromByteOffset: 32, as: UInt32.self) == 0, "nonzero reserved bytes passed")
    // Encoding the decoded header gives its bytes back, and they decode to the same header.
    var again = [UInt8](repeating: 0, count: FrameHeader.size)
    again.withUnsafeMutableBytes { header.encode(into: $0) }
    require(again.elementsEqual(bytes[0..<FrameHeader.size]), "encode(decode(header)) differs")
    let decodedAgain = again.withUnsafeBytes { try? FrameHeader.decode($0) }
    require(decodedAgain == header, "decode(encode(header)) differs")

    // The session, from the bytes after the frame.
    let frameEnd = FrameHeader.size + (header.type.isData ? 0 : Int(header.wireLength))
    func after(_ i: Int) -> Int { frameEnd + i < bytes.count ? Int(bytes[frameEnd + i]) : 0 }

    // The session's bound, as the channel applies it after decode: any chunk size a preamble
    // allows (4 KiB ... 16 MiB), and out-of-range ones too (the check must not trap on them).
    let chunkSelector = after(0) | after(1) << 8
    let maxChunk = chunkSelector == 0 ? WireLimits.maxChunkSize : chunkSelector << 8
    do throws(WireError) {
        try header.checkLengths(maxChunk: maxChunk)
        if header.type.isData { require(Int(header.rawLength) <= maxChunk, "raw length over the session's chunk size") }
    } catch {
        require(header.type.isData && Int(header.rawLength) > maxChunk, "checkLengths refused a header decode accepted: \(error)")
    }

    // The control payload that follows, through the decoder a receiver would run.
    guard !header.type.isData else { return }
    let wire = Int(header.wireLength)
    guard bytes.count - FrameHeader.size >= wire else { return }
    let payload = Array(bytes[FrameHeader.size..<(FrameHeader.size + wire)])
    var channels = after(2) % 64 + 1
    if after(2) == 0, payload.count >= 19 {
        let announced = Int(payload[17]) | Int(payload[18]) << 8
        if (1...Int(WireLimits.maxChannels)).contains(announced) { channels = announced }
    }
    let transfer = ControlPayload.forFrame(header.type, migration: false)
    let migration = ControlPayload.forFrame(header.type, migration: true)
    if let transfer { decodeControl(transfer, payload, channels: channels) }
    if let migration, migration != transfer { decodeControl(migration, payload, channels: channels) }
}

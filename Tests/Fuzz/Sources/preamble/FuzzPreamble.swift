// The connection preamble (`Preamble.decode`).
//
// Input: the first bytes of a connection. Each input is tried as it is, and again with its
// checksum (bytes 56 ..< 64) recomputed so mutations reach the field checks behind it.
import DSWire
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPreamble(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = FuzzInput(data, size)
    check(input.bytes)
    guard size >= Preamble.size else { return 0 }
    var fixed = Array(input.bytes)
    fixed.withUnsafeMutableBytes { b in
        let sum = fnv1a64(UnsafeRawBufferPointer(rebasing: b[0..<56]))
        b.storeBytes(of: sum.littleEndian, toByteOffset: 56, as: UInt64.self)
    }
    fixed.withUnsafeBytes { check($0) }
    return 0
}

private func check(_ bytes: UnsafeRawBufferPointer) {
    let p: Preamble
    do throws(WireError) {
        p = try Preamble.decode(bytes)
    } catch {
        require(!error.description.isEmpty, "empty WireError description")
        return
    }
    // What a receiver relies on once decode returns.
    require(p.channelCount >= 1 && p.channelCount <= WireLimits.maxChannels && p.channelIndex < p.channelCount,
            "channel \(p.channelIndex) of \(p.channelCount)")
    require(Int(p.chunkSize) >= WireLimits.minChunkSize && Int(p.chunkSize) <= WireLimits.maxChunkSize, "chunk size \(p.chunkSize)")
    require(FeatureBits.known.isSuperset(of: p.features), "unknown features")
    require(p.totalSize == Preamble.unknownSize || p.totalSize <= UInt64(Int64.max), "total size \(p.totalSize)")
    switch p.authMethod {
    case 0:
        require(p.authLength == 0 && !p.features.contains(.tls), "auth none with length \(p.authLength)")
    case Preamble.authSessionToken:
        require(p.features.contains(.tls), "a session token without TLS")
        require(Int(p.authLength) == (p.channelIndex == 0 ? 0 : Preamble.sessionTokenLength), "token length \(p.authLength)")
    default:
        require(false, "auth method \(p.authMethod) accepted")
    }
    require(bytes[45] == 0 && bytes[46] == 0 && bytes[47] == 0, "nonzero reserved bytes passed")
    // Encoding it gives its bytes back, and they decode to the same preamble.
    let again = p.encoded()
    require(again.elementsEqual(bytes[0..<Preamble.size]), "encode(decode(preamble)) differs")
    let decodedAgain = again.withUnsafeBytes { try? Preamble.decode($0) }
    require(decodedAgain == p, "decode(encode(preamble)) differs")
}

import DSSupport
/// Everything that can be wrong with bytes received from the network. Decoders never trap on
/// input: they throw one of these.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    case badMagic
    case unsupportedVersion(UInt16)
    case badPreambleLength(UInt16)
    case preambleChecksumMismatch
    case headerChecksumMismatch
    case unknownFrameType(UInt8)
    case unknownFlags(UInt8)
    case lengthOutOfBounds(field: String, value: UInt64, limit: UInt64)
    case inconsistentLengths(raw: UInt32, wire: UInt32, compressed: Bool)
    case badChannel(index: UInt16, count: UInt16)
    case unsupportedAuthentication(UInt16)
    case truncatedPayload(needed: Int, remaining: Int)
    /// Bytes the format reserves (zero in this version) are not zero.
    case reservedNotZero(String)
    case malformed(String)

    public var description: String {
        switch self {
        case .badMagic: "the peer is not speaking the devstream protocol (bad magic)"
        case .unsupportedVersion(let v): "unsupported wire version \(v) (this build speaks version \(WireLimits.version))"
        case .badPreambleLength(let n): "bad preamble length \(n)"
        case .preambleChecksumMismatch: "preamble checksum mismatch (corrupted connection start)"
        case .headerChecksumMismatch: "frame header checksum mismatch (corrupted stream)"
        case .unknownFrameType(let t): "unknown frame type \(Hex.code(t))"
        case .unknownFlags(let f): "unknown frame flags \(Hex.code(f))"
        case .lengthOutOfBounds(let field, let value, let limit): "\(field) \(value) exceeds the bound \(limit)"
        case .inconsistentLengths(let raw, let wire, let c):
            "inconsistent frame lengths: raw \(raw), wire \(wire), \(c ? "compressed" : "uncompressed")"
        case .badChannel(let i, let n): "bad channel \(i) of \(n)"
        case .unsupportedAuthentication(let m): "unsupported authentication method \(m)"
        case .truncatedPayload(let need, let rem): "truncated payload: needed \(need) bytes, \(rem) left"
        case .reservedNotZero(let what): "\(what) are reserved and must be zero (a peer of another version, or a corrupted one)"
        case .malformed(let what): "malformed frame: \(what)"
        }
    }
}

import DSSupport
/// The 64-byte preamble each connection opens with (sender → receiver).
///
/// ```
///  0  magic        8  "DSTREAM\n"
///  8  version      2  1
/// 10  length       2  64 (the preamble's own size; lets a later version grow it)
/// 12  features     4  FeatureBits
/// 16  session id  16  random, the same on every channel of one transfer
/// 32  channel      2  this connection's index, 0 ..< count
/// 34  count        2  channels in the session (1 ... 64)
/// 36  chunk size   4  largest raw chunk (4 KiB ... 16 MiB)
/// 40  auth method  2  0 = none; 1 = TLS session token (the session is TLS: feature bit `tls`)
/// 42  auth length  2  bytes sent right after the preamble: 0, or 32 (the token) on channels
///                     1 ... count-1 of a TLS session
/// 44  mode         1  TransferMode
/// 45  reserved     3  zero
/// 48  total size   8  bytes of state, or UInt64.max when unknown (a stream)
/// 56  checksum     8  FNV-1a 64 of bytes 0 ..< 56
/// ```
public struct Preamble: Equatable, Sendable {
    public static let size = 64
    public static let magic: [UInt8] = Array("DSTREAM\n".utf8)
    public static let unknownSize = UInt64.max

    public var features: FeatureBits
    public var sessionID: SessionID
    public var channelIndex: UInt16
    public var channelCount: UInt16
    public var chunkSize: UInt32
    public var authMethod: UInt16 = 0
    public var authLength: UInt16 = 0

    /// `authMethod` of a TLS session: channel 0 defines the session token (the TLS exporter
    /// of its connection); every other channel sends that token right after its preamble.
    public static let authSessionToken: UInt16 = 1
    /// Bytes of a session token.
    public static let sessionTokenLength = 32
    public var mode: TransferMode
    public var totalSize: UInt64

    public init(features: FeatureBits, sessionID: SessionID, channelIndex: UInt16, channelCount: UInt16,
                chunkSize: UInt32, mode: TransferMode, totalSize: UInt64) {
        self.features = features
        self.sessionID = sessionID
        self.channelIndex = channelIndex
        self.channelCount = channelCount
        self.chunkSize = chunkSize
        self.mode = mode
        self.totalSize = totalSize
    }

    /// Writes the preamble into the first 64 bytes of `buffer`.
    public func encode(into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= Self.size)
        for i in 0..<8 { buffer[i] = Self.magic[i] }
        buffer.storeLE(WireLimits.version, at: 8)
        buffer.storeLE(UInt16(Self.size), at: 10)
        buffer.storeLE(features.rawValue, at: 12)
        sessionID.store(into: buffer, at: 16)
        buffer.storeLE(channelIndex, at: 32)
        buffer.storeLE(channelCount, at: 34)
        buffer.storeLE(chunkSize, at: 36)
        buffer.storeLE(authMethod, at: 40)
        buffer.storeLE(authLength, at: 42)
        buffer[44] = mode.rawValue
        buffer[45] = 0; buffer[46] = 0; buffer[47] = 0
        buffer.storeLE(totalSize, at: 48)
        buffer.storeLE(fnv1a64(UnsafeRawBufferPointer(rebasing: buffer[0..<56])), at: 56)
    }

    public func encoded() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.withUnsafeMutableBytes { encode(into: $0) }
        return out
    }

    /// Decodes and validates a preamble from bytes received from the network.
    public static func decode(_ buffer: UnsafeRawBufferPointer) throws(WireError) -> Preamble {
        guard buffer.count >= size else { throw .truncatedPayload(needed: size, remaining: buffer.count) }
        for i in 0..<8 where buffer[i] != magic[i] { throw .badMagic }
        let version = buffer.loadLE(at: 8, as: UInt16.self)
        guard version == WireLimits.version else { throw .unsupportedVersion(version) }
        let length = buffer.loadLE(at: 10, as: UInt16.self)
        guard Int(length) == size else { throw .badPreambleLength(length) }
        guard fnv1a64(UnsafeRawBufferPointer(rebasing: buffer[0..<56])) == buffer.loadLE(at: 56, as: UInt64.self) else {
            throw .preambleChecksumMismatch
        }
        let features = FeatureBits(rawValue: buffer.loadLE(at: 12, as: UInt32.self))
        guard FeatureBits.known.isSuperset(of: features) else {
            throw .malformed("unknown feature bits \(Hex.code(features.rawValue))")
        }
        let index = buffer.loadLE(at: 32, as: UInt16.self)
        let count = buffer.loadLE(at: 34, as: UInt16.self)
        guard count >= 1, count <= WireLimits.maxChannels, index < count else { throw .badChannel(index: index, count: count) }
        let chunk = buffer.loadLE(at: 36, as: UInt32.self)
        guard chunk >= WireLimits.minChunkSize, chunk <= WireLimits.maxChunkSize else {
            throw .lengthOutOfBounds(field: "chunk size", value: UInt64(chunk), limit: UInt64(WireLimits.maxChunkSize))
        }
        let auth = buffer.loadLE(at: 40, as: UInt16.self)
        let authLength = buffer.loadLE(at: 42, as: UInt16.self)
        switch auth {
        case 0:
            guard authLength == 0 else { throw .malformed("auth length \(authLength) without an auth method") }
        case authSessionToken:
            guard features.contains(.tls) else { throw .malformed("a session token on a session that is not TLS") }
            guard Int(authLength) == (index == 0 ? 0 : sessionTokenLength) else {
                throw .malformed("channel \(index) of a TLS session carries a \(authLength)-byte token (expected \(index == 0 ? 0 : sessionTokenLength))")
            }
        default:
            throw .unsupportedAuthentication(auth)
        }
        guard !features.contains(.tls) || auth == authSessionToken else {
            throw .malformed("a TLS session without its session-token method")
        }
        guard let mode = TransferMode(rawValue: buffer[44]) else { throw .malformed("unknown transfer mode \(buffer[44])") }
        guard buffer[45] == 0, buffer[46] == 0, buffer[47] == 0 else { throw .reservedNotZero("preamble bytes 45 ..< 48") }
        let total = buffer.loadLE(at: 48, as: UInt64.self)
        guard total == unknownSize || total <= UInt64(Int64.max) else {
            throw .lengthOutOfBounds(field: "total size", value: total, limit: UInt64(Int64.max))
        }
        var p = Preamble(features: features, sessionID: SessionID(loading: buffer, at: 16), channelIndex: index,
                         channelCount: count, chunkSize: chunk, mode: mode,
                         totalSize: total)
        p.authMethod = auth
        p.authLength = authLength
        return p
    }
}

/// Optional features a sender announces.
public struct FeatureBits: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Data frames may be LZ4 blocks.
    public static let lz4 = FeatureBits(rawValue: 1 << 0)
    /// Data frames carry an XXH3-64 of their raw bytes (always set by v1 senders).
    public static let xxh3 = FeatureBits(rawValue: 1 << 1)
    /// The connection is TLS 1.3 (the preamble and everything after it travel inside TLS).
    public static let tls = FeatureBits(rawValue: 1 << 2)
    public static let known: FeatureBits = [.lz4, .xxh3, .tls]
}

/// What a session moves.
public enum TransferMode: UInt8, Sendable {
    /// A file or block device: chunks carry offsets, any channel carries any chunk.
    case addressable = 0
    /// An ordered byte stream (stdin, a pipe): chunks carry sequence numbers.
    case ordered = 1
    /// A live migration of one or more devices (device sections, iterations, switchover).
    case migration = 2
}

/// A 128-bit session identifier, random per transfer.
public struct SessionID: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64
    public init(high: UInt64, low: UInt64) { self.high = high; self.low = low }
    public static func random() -> SessionID {
        var g = SystemRandomNumberGenerator()
        return SessionID(high: g.next(), low: g.next())
    }
    init(loading buffer: UnsafeRawBufferPointer, at offset: Int) {
        high = buffer.loadLE(at: offset, as: UInt64.self)
        low = buffer.loadLE(at: offset + 8, as: UInt64.self)
    }
    func store(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        buffer.storeLE(high, at: offset)
        buffer.storeLE(low, at: offset + 8)
    }
    public var description: String {
        Hex.digest(high) + Hex.digest(low)
    }
}

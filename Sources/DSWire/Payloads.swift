/// Control-frame payloads. Each encodes to bytes and decodes with bounds checks.

/// `channelEnd` / `endOfState`: what one channel (or one device) carried.
public struct ChannelEnd: Equatable, Sendable {
    public var chunks: UInt64
    public var rawBytes: UInt64
    public init(chunks: UInt64, rawBytes: UInt64) { self.chunks = chunks; self.rawBytes = rawBytes }
    public func encoded() -> [UInt8] {
        var w = PayloadWriter(); w.u64(chunks); w.u64(rawBytes); return w.bytes
    }
    public static func decode(_ bytes: [UInt8]) throws(WireError) -> ChannelEnd {
        var r = PayloadReader(bytes)
        return ChannelEnd(chunks: try r.u64(), rawBytes: try r.u64())
    }
}

/// `endOfStream` and `ack`: the totals of a whole transfer, so the receiver can prove it is
/// complete (and the sender that the receiver saw the same).
public struct TransferTotals: Equatable, Sendable {
    public var chunks: UInt64
    public var rawBytes: UInt64
    public var wireBytes: UInt64
    /// The transfer digest (see `TransferDigest` in DSCodec).
    public var digest: UInt64
    public init(chunks: UInt64, rawBytes: UInt64, wireBytes: UInt64, digest: UInt64) {
        self.chunks = chunks; self.rawBytes = rawBytes; self.wireBytes = wireBytes; self.digest = digest
    }
    public func encoded() -> [UInt8] {
        var w = PayloadWriter(); w.u64(chunks); w.u64(rawBytes); w.u64(wireBytes); w.u64(digest); return w.bytes
    }
    public static func decode(_ bytes: [UInt8]) throws(WireError) -> TransferTotals {
        var r = PayloadReader(bytes)
        return TransferTotals(chunks: try r.u64(), rawBytes: try r.u64(), wireBytes: try r.u64(), digest: try r.u64())
    }
}

/// `error` and `reject`: a code and a message for a person.
public struct ErrorMessage: Equatable, Sendable {
    public var code: UInt16
    public var message: String
    /// The largest encoded message: the code, the length, `WireLimits.maxStringBytes` of text.
    public static let maxEncodedSize = 2 + 4 + WireLimits.maxStringBytes
    public init(code: UInt16, message: String) { self.code = code; self.message = message }
    /// The code and the message, cut to `WireLimits.maxStringBytes` of UTF-8 (at a scalar
    /// boundary), so the peer's decoder always accepts it.
    public func encoded() -> [UInt8] {
        var w = PayloadWriter(); w.u16(code); w.string(message); return w.bytes
    }
    public static func decode(_ bytes: [UInt8]) throws(WireError) -> ErrorMessage {
        var r = PayloadReader(bytes)
        return ErrorMessage(code: try r.u16(), message: try r.string())
    }
}

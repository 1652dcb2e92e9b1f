import DSSupport

/// FNV-1a, 64-bit: the header check. Headers are small (≤ 64 bytes), so a byte loop is cheap
/// and keeps this module free of C. Payloads use XXH3-64 (see DSCodec).
@inlinable package func fnv1a64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes {
        h ^= UInt64(b)
        h = h &* 0x100_0000_01b3
    }
    return h
}

/// A growable little-endian writer for control-frame payloads (off the hot path).
public struct PayloadWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init() {}
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { bytes.appendLE(v) }
    public mutating func u32(_ v: UInt32) { bytes.appendLE(v) }
    public mutating func u64(_ v: UInt64) { bytes.appendLE(v) }
    public mutating func f64(_ v: Double) { u64(v.bitPattern) }
    /// A length-prefixed (u32) byte string.
    public mutating func blob(_ v: [UInt8]) { u32(UInt32(v.count)); bytes.append(contentsOf: v) }
    /// A length-prefixed UTF-8 string, cut at a Unicode scalar boundary to at most `limit` bytes
    /// (by default what `PayloadReader.string()` accepts: the peer must be able to read it).
    public mutating func string(_ v: String, limit: Int = WireLimits.maxStringBytes) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(min(v.utf8.count, limit))
        for scalar in v.unicodeScalars {
            let width = UTF8.width(scalar)
            guard bytes.count + width <= limit else { break }
            bytes.append(contentsOf: UTF8.encode(scalar)!)
        }
        blob(bytes)
    }
}

/// A bounds-checked little-endian reader over bytes from the network: every read checks the
/// remaining length first and throws instead of trapping.
public struct PayloadReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var position = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var remaining: Int { bytes.count - position }

    private mutating func take<T: FixedWidthInteger>(_: T.Type) throws(WireError) -> T {
        let n = MemoryLayout<T>.size
        guard remaining >= n else { throw WireError.truncatedPayload(needed: n, remaining: remaining) }
        let v = bytes.withUnsafeBytes { $0.loadLE(at: position, as: T.self) }
        position += n
        return v
    }
    public mutating func u8() throws(WireError) -> UInt8 { try take(UInt8.self) }
    public mutating func u16() throws(WireError) -> UInt16 { try take(UInt16.self) }
    public mutating func u32() throws(WireError) -> UInt32 { try take(UInt32.self) }
    public mutating func u64() throws(WireError) -> UInt64 { try take(UInt64.self) }
    public mutating func f64() throws(WireError) -> Double { Double(bitPattern: try u64()) }
    /// A length-prefixed byte string, at most `limit` bytes.
    public mutating func blob(limit: Int = WireLimits.maxControlPayload) throws(WireError) -> [UInt8] {
        let n = Int(try u32())
        guard n <= limit else { throw WireError.lengthOutOfBounds(field: "blob", value: UInt64(n), limit: UInt64(limit)) }
        guard remaining >= n else { throw WireError.truncatedPayload(needed: n, remaining: remaining) }
        defer { position += n }
        return Array(bytes[position..<position + n])
    }
    /// A length-prefixed UTF-8 string from the peer, escaped for printing (`PeerText`): control
    /// characters never reach a terminal, and its length is bounded.
    public mutating func string(limit: Int = WireLimits.maxStringBytes) throws(WireError) -> String {
        PeerText.escape(String(decoding: try blob(limit: limit), as: UTF8.self))
    }
}

import Testing
@testable import DSWire
import DSSupport

@Suite struct PreambleTests {
    let sample = Preamble(features: [.lz4, .xxh3], sessionID: SessionID(high: 0x0102, low: 0xAABB), channelIndex: 1,
                          channelCount: 4, chunkSize: 1 << 20, mode: .addressable, totalSize: 123_456_789)

    @Test func roundTrip() throws {
        let bytes = sample.encoded()
        #expect(bytes.count == 64)
        #expect(Array(bytes[0..<8]) == Array("DSTREAM\n".utf8))
        let back = try bytes.withUnsafeBytes { try Preamble.decode($0) }
        #expect(back == sample)
    }

    @Test func everyFlippedByteIsRejected() {
        let bytes = sample.encoded()
        for i in 0..<bytes.count {
            var b = bytes
            b[i] ^= 0x10
            #expect(throws: WireError.self) { try b.withUnsafeBytes { try Preamble.decode($0) } }
        }
    }

    /// Nonzero reserved bytes (45 ..< 48) are refused even with a valid checksum.
    @Test func reservedBytesMustBeZero() throws {
        for at in 45..<48 {
            var b = sample.encoded()
            b[at] = 1
            let sum = b.withUnsafeBytes { fnv1a64(UnsafeRawBufferPointer(rebasing: $0[0..<56])) }
            b.withUnsafeMutableBytes { $0.storeLE(sum, at: 56) }
            #expect(throws: WireError.reservedNotZero("preamble bytes 45 ..< 48")) { try b.withUnsafeBytes { try Preamble.decode($0) } }
        }
        #expect(WireError.reservedNotZero("preamble bytes 45 ..< 48").description.contains("must be zero"))
    }

    @Test func garbageIsBadMagic() {
        let http = Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8) + [UInt8](repeating: 0, count: 40)
        #expect(throws: WireError.badMagic) { try http.withUnsafeBytes { try Preamble.decode($0) } }
    }

    @Test func boundsAreEnforced() {
        var p = sample
        p.chunkSize = UInt32(WireLimits.maxChunkSize + 1)
        #expect(throws: WireError.self) { try p.encoded().withUnsafeBytes { try Preamble.decode($0) } }
        p = sample
        p.channelIndex = 4
        #expect(throws: WireError.badChannel(index: 4, count: 4)) { try p.encoded().withUnsafeBytes { try Preamble.decode($0) } }
        p = sample
        p.authMethod = 7
        #expect(throws: WireError.unsupportedAuthentication(7)) { try p.encoded().withUnsafeBytes { try Preamble.decode($0) } }
    }

    /// Auth method 1 (TLS session token): only with the `tls` feature bit, 0 bytes on channel 0
    /// and 32 on the others; a TLS preamble without it is refused too.
    @Test func sessionTokenMethod() throws {
        func decode(_ p: Preamble) throws -> Preamble { try p.encoded().withUnsafeBytes { try Preamble.decode($0) } }
        var p = sample
        p.features.insert(.tls)
        p.authMethod = Preamble.authSessionToken
        p.channelIndex = 0
        #expect(try decode(p) == p)
        p.channelIndex = 2
        p.authLength = 32
        #expect(try decode(p) == p)
        p.authLength = 0
        #expect(throws: WireError.self) { try decode(p) }
        p.channelIndex = 0
        p.authLength = 32
        #expect(throws: WireError.self) { try decode(p) }
        var plain = sample
        plain.authMethod = Preamble.authSessionToken
        #expect(throws: WireError.self) { try decode(plain) }
        plain = sample
        plain.features.insert(.tls)
        #expect(throws: WireError.self) { try decode(plain) }
        plain = sample
        plain.authLength = 32
        #expect(throws: WireError.self) { try decode(plain) }
    }

    @Test func truncated() {
        let bytes = Array(sample.encoded()[0..<63])
        #expect(throws: WireError.truncatedPayload(needed: 64, remaining: 63)) { try bytes.withUnsafeBytes { try Preamble.decode($0) } }
    }
}

@Suite struct FrameHeaderTests {
    func encode(_ h: FrameHeader) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: FrameHeader.size)
        b.withUnsafeMutableBytes { h.encode(into: $0) }
        return b
    }

    @Test func roundTripEveryType() throws {
        for t in FrameType.allCases {
            let h = t.isData
                ? FrameHeader(type: t, flags: [.lz4], stream: 3, rawLength: 1 << 20, wireLength: 1000, aux: 9,
                              position: 1 << 40, checksum: 0xDEAD_BEEF_F00D)
                : FrameHeader(type: t, stream: 3, rawLength: 12, wireLength: 12, aux: 9, position: 5, checksum: 77)
            let back = try encode(h).withUnsafeBytes { try FrameHeader.decode($0) }
            #expect(back == h)
        }
    }

    @Test func everyFlippedBitIsRejected() {
        let h = FrameHeader(type: .data, flags: [.lz4], rawLength: 4096, wireLength: 100, position: 8192, checksum: 42)
        let bytes = encode(h)
        for i in 0..<bytes.count {
            for bit in 0..<8 {
                var b = bytes
                b[i] ^= UInt8(1 << bit)
                #expect(throws: WireError.self) { try b.withUnsafeBytes { try FrameHeader.decode($0) } }
            }
        }
    }

    @Test func impossibleLengths() {
        // raw length over the absolute bound, with a valid header check.
        let tooBig = FrameHeader(type: .data, rawLength: UInt32(WireLimits.maxChunkSize + 1), wireLength: UInt32(WireLimits.maxChunkSize + 1))
        #expect(throws: WireError.self) { try encode(tooBig).withUnsafeBytes { try FrameHeader.decode($0) } }
        // compressed wire length above LZ4's bound for the raw length.
        let overBound = FrameHeader(type: .data, flags: [.lz4], rawLength: 100, wireLength: 1000)
        #expect(throws: WireError.inconsistentLengths(raw: 100, wire: 1000, compressed: true)) {
            try encode(overBound).withUnsafeBytes { try FrameHeader.decode($0) }
        }
        // raw frames must have wire == raw.
        let rawMismatch = FrameHeader(type: .data, rawLength: 100, wireLength: 99)
        #expect(throws: WireError.self) { try encode(rawMismatch).withUnsafeBytes { try FrameHeader.decode($0) } }
        // zero-length data.
        let zero = FrameHeader(type: .streamData, rawLength: 0, wireLength: 0)
        #expect(throws: WireError.self) { try encode(zero).withUnsafeBytes { try FrameHeader.decode($0) } }
        // control payload over its bound.
        let ctl = FrameHeader(type: .error, rawLength: UInt32(WireLimits.maxControlPayload + 1), wireLength: UInt32(WireLimits.maxControlPayload + 1))
        #expect(throws: WireError.self) { try encode(ctl).withUnsafeBytes { try FrameHeader.decode($0) } }
        // session bound tighter than the absolute one.
        let h = FrameHeader(type: .data, rawLength: 1 << 21, wireLength: 1 << 21)
        #expect(throws: WireError.self) { try h.checkLengths(maxChunk: 1 << 20) }
    }

    /// Nonzero reserved bytes (32 ..< 36) are refused even with a valid header check.
    @Test func reservedBytesMustBeZero() throws {
        for at in 32..<36 {
            var b = encode(FrameHeader(type: .data, rawLength: 10, wireLength: 10, position: 4096, checksum: 7))
            b[at] = 0x80
            let check = UInt32(truncatingIfNeeded: b.withUnsafeBytes { fnv1a64(UnsafeRawBufferPointer(rebasing: $0[0..<36])) })
            b.withUnsafeMutableBytes { $0.storeLE(check, at: 36) }
            #expect(throws: WireError.reservedNotZero("frame header bytes 32 ..< 36")) { try b.withUnsafeBytes { try FrameHeader.decode($0) } }
        }
    }

    @Test func unknownTypeAndFlags() {
        var b = encode(FrameHeader(type: .ack, rawLength: 0, wireLength: 0))
        b[0] = 0x7F
        // re-seal the header check so only the type is wrong
        let check = UInt32(truncatingIfNeeded: b.withUnsafeBytes { fnv1a64(UnsafeRawBufferPointer(rebasing: $0[0..<36])) })
        b.withUnsafeMutableBytes { $0.storeLE(check, at: 36) }
        #expect(throws: WireError.unknownFrameType(0x7F)) { try b.withUnsafeBytes { try FrameHeader.decode($0) } }
    }
}

@Suite struct PayloadTests {
    @Test func totalsRoundTrip() throws {
        let t = TransferTotals(chunks: 3, rawBytes: 1 << 33, wireBytes: 99, digest: 0xABCDEF)
        #expect(try TransferTotals.decode(t.encoded()) == t)
        let e = ErrorMessage(code: 7, message: "disk full on /tmp/x")
        #expect(try ErrorMessage.decode(e.encoded()) == e)
        let c = ChannelEnd(chunks: 1, rawBytes: 2)
        #expect(try ChannelEnd.decode(c.encoded()) == c)
    }

    @Test func truncatedPayloadsThrow() {
        let t = TransferTotals(chunks: 3, rawBytes: 4, wireBytes: 5, digest: 6).encoded()
        for n in 0..<t.count {
            #expect(throws: WireError.self) { try TransferTotals.decode(Array(t[0..<n])) }
        }
        // a string length that claims more than is there
        var w = PayloadWriter(); w.u16(1); w.u32(0xFFFF_FFF0)
        #expect(throws: WireError.self) { try ErrorMessage.decode(w.bytes) }
    }

    /// Found with the payloads fuzz target's encode-then-decode check: the encoder cut a message
    /// to 2000 *characters*, which can be far more than the 4096 UTF-8 bytes the decoder accepts
    /// ("€" is 3 bytes, a letter with combining marks is one character of any length), so the
    /// peer refused the message. Whatever an encoder writes, the decoder must read.
    @Test func longTextIsCutToWhatTheDecoderAccepts() throws {
        let texts = [
            String(repeating: "€", count: 1400),                                     // 4200 bytes, 1400 characters
            "e" + String(repeating: "\u{301}", count: 3000),                          // one character, 6001 bytes
            String(repeating: "a", count: 4095) + "€",                               // the cut falls inside a scalar
            String(repeating: "x", count: 10_000),
        ]
        for text in texts {
            let bytes = ErrorMessage(code: 3, message: text).encoded()
            #expect(bytes.count <= ErrorMessage.maxEncodedSize)
            let got = try ErrorMessage.decode(bytes)
            #expect(got.code == 3)
            #expect(got.message == PeerText.escape(Self.utf8Prefix(text, WireLimits.maxStringBytes)))

            let spec = "file:/" + text
            let header = try DeviceHeader.decode(DeviceHeader(kind: .addressable, size: 4096, flags: 0, spec: spec).encoded())
            #expect(header.spec == PeerText.escape(Self.utf8Prefix(spec, WireLimits.maxStringBytes)))
        }
        // The cut keeps whole scalars: 4095 bytes of "a", not half a "€".
        var w = PayloadWriter(); w.string(String(repeating: "a", count: 4095) + "€")
        #expect(w.bytes.count == 4 + 4095)
        // Text within the bound goes unchanged.
        let short = ErrorMessage(code: 1, message: String(repeating: "€", count: 1365))
        #expect(try ErrorMessage.decode(short.encoded()) == ErrorMessage(code: 1, message: PeerText.escape(short.message)))
    }

    /// The longest prefix of whole Unicode scalars of `text` that fits `limit` UTF-8 bytes.
    static func utf8Prefix(_ text: String, _ limit: Int) -> String {
        var out = String.UnicodeScalarView()
        var n = 0
        for s in text.unicodeScalars {
            n += UTF8.width(s)
            if n > limit { break }
            out.append(s)
        }
        return String(out)
    }
}

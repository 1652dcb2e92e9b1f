/// Hexadecimal text for digests and codes (one helper for every layer).
package enum Hex {
    /// Sixteen lower-case hex digits, zero-padded: how every XXH3 digest is printed.
    package static func digest(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    /// `0x` and the shortest lower-case hex digits (`0x1b`), for codes and flags.
    package static func code<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }

    /// Two lower-case hex digits per byte, no separators (keys, tokens).
    package static func bytes(_ b: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".unicodeScalars)
        var out = String.UnicodeScalarView()
        for x in b { out.append(digits[Int(x >> 4)]); out.append(digits[Int(x & 0xf)]) }
        return String(out)
    }
}

// Parsing of the human-written durations and sizes a CLI accepts
// (`--downtime-limit 300ms`, `--max-bandwidth 1.5G`, `--deadline 2m`).
//
// Numbers are decimal (`digits[.digits]`) and are evaluated exactly with
// integer arithmetic (no floating point), so "1.5G" is exactly 1610612736
// bytes and "0.1s" exactly 100_000_000 ns. No Foundation is needed.

/// Why a duration or size string was rejected.
public struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Equatable, Sendable {
        /// The input was empty (or only whitespace).
        case empty
        /// The numeric part is missing or malformed (e.g. "abc", "1.2.3s", "s").
        case invalidNumber
        /// A leading '-': negative durations and sizes are not allowed.
        case negative
        /// A duration without a unit ("300"): the unit is required.
        case missingUnit
        /// The unit is not one of the accepted ones.
        case unknownUnit(String)
        /// The value does not fit (Int64 nanoseconds / UInt64 bytes).
        case overflow
        /// A size that is not a whole number of bytes ("1.1K" = 1126.4 bytes).
        case fractionalBytes
    }

    /// "duration" or "size".
    public var what: String
    public var input: String
    public var kind: Kind
    /// Human-readable list of accepted forms, included in `description`.
    public var acceptedForms: String

    public init(what: String, input: String, kind: Kind, acceptedForms: String) {
        self.what = what
        self.input = input
        self.kind = kind
        self.acceptedForms = acceptedForms
    }

    public var reason: String {
        switch kind {
        case .empty: return "the value is empty"
        case .invalidNumber: return "expected a decimal number such as 300 or 1.5 before the unit"
        case .negative: return "negative values are not allowed"
        case .missingUnit: return "a unit is required"
        case .unknownUnit(let u): return "unknown unit '\(u)'"
        case .overflow: return "the value is too large"
        case .fractionalBytes: return "the value is not a whole number of bytes"
        }
    }

    public var description: String {
        "invalid \(what) '\(input)': \(reason); accepted forms: \(acceptedForms)"
    }
}

/// Parses durations such as "300ms", "1.5s", "60s", "2m", "500us".
///
/// Accepted units (case-insensitive): `ns`, `us` (or `µs`), `ms`, `s`,
/// `m` (or `min`), `h`. The unit is mandatory. Sub-nanosecond fractions are
/// truncated. Whitespace around the value and between number and unit is
/// ignored.
public enum DurationParsing {
    public static let acceptedForms =
        "<number><unit> with unit ns, us, ms, s, m, h (e.g. 500us, 300ms, 1.5s, 60s, 2m)"

    public static func parse(_ text: String) throws(ParseError) -> Duration {
        func fail(_ kind: ParseError.Kind) -> ParseError {
            ParseError(what: "duration", input: text, kind: kind, acceptedForms: acceptedForms)
        }
        let (number, unit) = try splitNumber(text, fail: fail)
        let multiplier: UInt64
        switch unit.lowercased() {
        case "": throw fail(.missingUnit)
        case "ns": multiplier = 1
        case "us", "µs": multiplier = 1_000
        case "ms": multiplier = 1_000_000
        case "s", "sec": multiplier = 1_000_000_000
        case "m", "min": multiplier = 60_000_000_000
        case "h": multiplier = 3_600_000_000_000
        default: throw fail(.unknownUnit(unit))
        }
        guard let value = number.scaled(by: multiplier) else { throw fail(.overflow) }
        guard value.whole <= UInt64(Int64.max) else { throw fail(.overflow) }
        return .nanoseconds(Int64(value.whole))  // sub-ns remainder truncated
    }
}

/// Parses sizes such as "1G", "64M", "4K", "1.5G", "1024", "10MiB", "1GB".
///
/// All multiples are binary (K = 1024): `K`/`KB`/`KiB`, `M`/`MB`/`MiB`,
/// `G`/`GB`/`GiB`, `T`/`TB`/`TiB`, `P`/`PB`/`PiB`, case-insensitive; no unit
/// or `B` means bytes. The result must be a whole number of bytes.
public enum SizeParsing {
    public static let acceptedForms =
        "<number>[unit] with binary unit B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB, P/PB/PiB, K = 1024 (e.g. 1024, 4K, 64M, 1.5G, 10MiB, 1GB)"

    public static func parse(_ text: String) throws(ParseError) -> UInt64 {
        func fail(_ kind: ParseError.Kind) -> ParseError {
            ParseError(what: "size", input: text, kind: kind, acceptedForms: acceptedForms)
        }
        let (number, unit) = try splitNumber(text, fail: fail)
        let shift: UInt64
        switch unit.lowercased() {
        case "", "b": shift = 0
        case "k", "kb", "kib": shift = 10
        case "m", "mb", "mib": shift = 20
        case "g", "gb", "gib": shift = 30
        case "t", "tb", "tib": shift = 40
        case "p", "pb", "pib": shift = 50
        default: throw fail(.unknownUnit(unit))
        }
        guard let value = number.scaled(by: 1 << shift) else { throw fail(.overflow) }
        guard !value.hasFraction else { throw fail(.fractionalBytes) }
        return value.whole
    }
}

// MARK: - Exact decimal arithmetic

/// A non-negative decimal `integer.fraction` kept as integers.
struct DecimalNumber {
    var integer: UInt64
    /// Fraction digits as an integer, with `fractionScale` = 10^digits.
    var fraction: UInt64
    var fractionScale: UInt64

    /// `self * multiplier`, split into whole part and whether a remainder
    /// was left; nil on overflow.
    func scaled(by multiplier: UInt64) -> (whole: UInt64, hasFraction: Bool)? {
        let (wholeInt, overflow) = integer.multipliedReportingOverflow(by: multiplier)
        if overflow { return nil }
        // fraction * multiplier / fractionScale < multiplier, so it fits.
        let product = fraction.multipliedFullWidth(by: multiplier)
        let (q, r) = fractionScale.dividingFullWidth(product)
        let (sum, overflow2) = wholeInt.addingReportingOverflow(q)
        if overflow2 { return nil }
        return (sum, r != 0)
    }
}

/// Splits "  1.5 GiB " into an exact decimal number and the unit text.
func splitNumber(
    _ text: String, fail: (ParseError.Kind) -> ParseError
) throws(ParseError) -> (DecimalNumber, String) {
    let trimmed = text.trimmingSpaces()
    if trimmed.isEmpty { throw fail(.empty) }
    if trimmed.hasPrefix("-") { throw fail(.negative) }
    var integerDigits = ""
    var fractionDigits = ""
    var seenDot = false
    var index = trimmed.startIndex
    while index < trimmed.endIndex {
        let c = trimmed[index]
        if c == "." {
            if seenDot { throw fail(.invalidNumber) }
            seenDot = true
        } else if c.isASCII, c.isNumber {
            if seenDot { fractionDigits.append(c) } else { integerDigits.append(c) }
        } else {
            break
        }
        index = trimmed.index(after: index)
    }
    if integerDigits.isEmpty && fractionDigits.isEmpty { throw fail(.invalidNumber) }
    let unit = String(trimmed[index...]).trimmingSpaces()
    // A unit may not itself contain digits or dots ("1.5s3", "1s.").
    if unit.contains(where: { $0 == "." || ($0.isASCII && $0.isNumber) }) {
        throw fail(.invalidNumber)
    }

    var integer: UInt64 = 0
    for c in integerDigits {
        let d = UInt64(c.asciiValue! - 48)
        let (m, o1) = integer.multipliedReportingOverflow(by: 10)
        let (s, o2) = m.addingReportingOverflow(d)
        if o1 || o2 { throw fail(.overflow) }
        integer = s
    }
    // Keep at most 18 fraction digits (10^18 fits in UInt64); beyond that
    // the digits are below any unit's resolution that matters here.
    var fraction: UInt64 = 0
    var scale: UInt64 = 1
    for c in fractionDigits.prefix(18) {
        fraction = fraction * 10 + UInt64(c.asciiValue! - 48)
        scale *= 10
    }
    return (DecimalNumber(integer: integer, fraction: fraction, fractionScale: scale), unit)
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}

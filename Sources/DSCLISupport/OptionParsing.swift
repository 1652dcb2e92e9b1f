import ArgumentParser
import DSSupport

/// The CLI's option parsers: the one size and duration grammar (`SizeParsing`,
/// `DurationParsing`), with the option's name in the error.
package enum OptionParsing {
    /// A size such as `64M` or `1.5G` for `option`.
    package static func size(_ text: String, option: String) throws -> UInt64 {
        do { return try SizeParsing.parse(text) } catch { throw ValidationError("\(option): \(error)") }
    }

    /// A rate such as `200M` or `200M/s` (bytes per second) for `option`.
    package static func rate(_ text: String, option: String) throws -> UInt64 {
        try size(text.hasSuffix("/s") ? String(text.dropLast(2)) : text, option: option)
    }

    /// A duration such as `300ms` or `2m` for `option`.
    package static func duration(_ text: String, option: String) throws -> Duration {
        do { return try DurationParsing.parse(text) } catch { throw ValidationError("\(option): \(error)") }
    }
}

import Testing
import DSSupport

@Suite("Parsing")
struct ParsingTests {
    @Test(arguments: [
        ("300ms", Duration.milliseconds(300)),
        ("1.5s", .milliseconds(1500)),
        ("60s", .seconds(60)),
        ("2m", .seconds(120)),
        ("500us", .microseconds(500)),
        ("0.1s", .milliseconds(100)),
        (" 250 ms ", .milliseconds(250)),
        ("1h", .seconds(3600)),
        ("10ns", .nanoseconds(10)),
        ("1.5MS", .microseconds(1500)),
        (".5s", .milliseconds(500)),
    ])
    func goodDurations(input: String, expected: Duration) throws {
        #expect(try DurationParsing.parse(input) == expected)
    }

    @Test(arguments: [
        ("", ParseError.Kind.empty),
        ("   ", .empty),
        ("abc", .invalidNumber),
        ("ms", .invalidNumber),
        ("1.2.3s", .invalidNumber),
        ("1s5", .invalidNumber),
        ("-1s", .negative),
        ("300", .missingUnit),
        ("5x", .unknownUnit("x")),
        ("5 days", .unknownUnit("days")),
        ("99999999999h", .overflow),
        ("99999999999999999999999s", .overflow),
    ])
    func badDurations(input: String, kind: ParseError.Kind) {
        #expect(throws: ParseError(what: "duration", input: input, kind: kind,
                                   acceptedForms: DurationParsing.acceptedForms)) {
            try DurationParsing.parse(input)
        }
    }

    @Test(arguments: [
        ("1G", UInt64(1) << 30),
        ("64M", 64 << 20),
        ("4K", 4096),
        ("1.5G", 1_610_612_736),
        ("1024", 1024),
        ("10MiB", 10_485_760),
        ("1GB", 1 << 30),
        ("4k", 4096),
        ("512B", 512),
        ("0.5K", 512),
        ("2T", 2 << 40),
        ("15P", 15 << 50),
    ])
    func goodSizes(input: String, expected: UInt64) throws {
        #expect(try SizeParsing.parse(input) == expected)
    }

    @Test(arguments: [
        ("", ParseError.Kind.empty),
        ("G", .invalidNumber),
        ("1.1K", .fractionalBytes),
        ("1.5", .fractionalBytes),
        ("12Q", .unknownUnit("Q")),
        ("10 MiBs", .unknownUnit("MiBs")),
        ("-1K", .negative),
        ("16777216T", .overflow),
        ("16384P", .overflow),
        ("18446744073709551616", .overflow),
    ])
    func badSizes(input: String, kind: ParseError.Kind) {
        #expect(throws: ParseError(what: "size", input: input, kind: kind,
                                   acceptedForms: SizeParsing.acceptedForms)) {
            try SizeParsing.parse(input)
        }
    }

    @Test func errorMessagesSayWhatWasWrongAndTheAcceptedForms() {
        do {
            _ = try DurationParsing.parse("5x")
            Issue.record("expected an error")
        } catch {
            #expect(error.description == "invalid duration '5x': unknown unit 'x'; accepted forms: <number><unit> with unit ns, us, ms, s, m, h (e.g. 500us, 300ms, 1.5s, 60s, 2m)")
        }
        do {
            _ = try SizeParsing.parse("1.1K")
            Issue.record("expected an error")
        } catch {
            #expect(error.description.hasPrefix("invalid size '1.1K': the value is not a whole number of bytes; accepted forms: <number>[unit] with binary unit"))
        }
    }
}

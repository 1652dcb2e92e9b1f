// The text a user gives the CLI: device specs (`DeviceSpec(_:)`), sizes (`SizeParsing.parse`)
// and durations (`DurationParsing.parse`). Each input, read as UTF-8, goes to all three.
// Promised: a value or an error that names the input; never a trap. A size or duration that
// parses re-parses to the same value from its plain decimal form; a spec that parses names a
// kind with a usable size (a positive multiple of 4 KiB).
import DSDevices
import DSSimulation
import DSSupport
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSpecs(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = FuzzInput(data, size)
    let text = String(decoding: input.bytes, as: UTF8.self)

    do throws(ParseError) {
        let bytes = try SizeParsing.parse(text)
        let again = try SizeParsing.parse(String(bytes))
        require(again == bytes, "size \(bytes) re-parses as \(again)")
    } catch {
        require(error.what == "size" && !error.description.isEmpty, "size error \(error)")
    }

    do throws(ParseError) {
        let d = try DurationParsing.parse(text)
        require(d >= .zero, "negative duration \(d) from \(text.debugDescription)")
        let (seconds, atto) = d.components
        let nanos = seconds * 1_000_000_000 + atto / 1_000_000_000
        let again = try DurationParsing.parse("\(nanos)ns")
        require(again == d, "duration \(d) re-parses as \(again)")
    } catch {
        require(error.what == "duration" && !error.description.isEmpty, "duration error \(error)")
    }

    do throws(DeviceError) {
        let spec = try DeviceSpec(text)
        require(spec.text == text, "spec text")
        switch spec.kind {
        case .sim(let o):
            require(o.size > 0 && o.size % 4096 == 0, "sim size \(o.size)")
            require(o.chunkSize >= 4096 && o.chunkSize <= 1 << 30 && o.chunkSize.nonzeroBitCount == 1, "sim chunk \(o.chunkSize)")
            require(o.hotFraction >= 0 && o.hotFraction <= 1, "hot \(o.hotFraction)")
        case .vfioEmu(let o):
            require(o.size > 0 && o.size % 4096 == 0, "vfio-emu size \(o.size)")
        case .file(let path), .vfio(let path):
            require(!path.isEmpty, "empty path")
        }
        _ = try? spec.checkDestination()
    } catch {
        require(error.code == .badSpec && !error.message.isEmpty, "spec error \(error)")
    }

    if let f = DeviceSpec.parseFraction(text) { require(f >= 0 && f <= 1 && f.isFinite, "fraction \(f)") }
    return 0
}

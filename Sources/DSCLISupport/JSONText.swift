import DeviceStream
import DSSupport
import DSWire
import DSCodec
import DSRing
import DSTransport
import DSDevices
import DSScheduler

/// One line of JSON for the CLI's `--json` reports: total, so a report never fails to print.
///
/// Numbers that JSON cannot hold (NaN, ±infinity — a hostile or broken peer can send them, as
/// the load rate in `loadStats`) become `null`; strings are escaped (control characters as
/// `\uXXXX`); keys are sorted. Values: `String`, `Bool`, the integer types, `Double`, `Float`,
/// `NSNullLike`, nil, arrays and `[String: Any]`; anything else is written as its description,
/// a string.
package enum JSONText {
    package static func encode(_ value: Any) -> String {
        var out = ""
        write(value, to: &out)
        return out
    }

    private static func write(_ value: Any, to out: inout String) {
        switch value {
        case let s as String: string(s, to: &out)
        case let b as Bool: out += b ? "true" : "false"
        case let n as Int: out += String(n)
        case let n as Int64: out += String(n)
        case let n as Int32: out += String(n)
        case let n as UInt64: out += String(n)
        case let n as UInt32: out += String(n)
        case let n as UInt16: out += String(n)
        case let n as UInt8: out += String(n)
        case let n as UInt: out += String(n)
        case let d as Double: number(d, to: &out)
        case let f as Float: number(Double(f), to: &out)
        case is NSNullLike: out += "null"
        case let o as [String: Any]:
            out += "{"
            for (i, key) in o.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                string(key, to: &out)
                out += ":"
                write(o[key]!, to: &out)
            }
            out += "}"
        case let a as [Any]:
            out += "["
            for (i, v) in a.enumerated() {
                if i > 0 { out += "," }
                write(v, to: &out)
            }
            out += "]"
        default:
            // An Optional that is nil is null; one with a value is written as that value.
            let mirror = Mirror(reflecting: value)
            if mirror.displayStyle == .optional {
                if let inner = mirror.children.first?.value { write(inner, to: &out) } else { out += "null" }
            } else {
                string(String(describing: value), to: &out)
            }
        }
    }

    private static func number(_ d: Double, to out: inout String) {
        guard d.isFinite else { out += "null"; return }
        if d == d.rounded(), abs(d) < 1e15 { out += String(Int64(d)); return }
        out += "\(d)"
    }

    private static func string(_ s: String, to out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 || u.value == 0x7F || (u.value >= 0x80 && u.value < 0xA0) || u.value == 0x2028 || u.value == 0x2029 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }
}

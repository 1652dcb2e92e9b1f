/// Text that came from a peer (error and reject messages, device specs), made safe to print.
///
/// A hostile peer must not drive the local terminal: every control character — C0 (including
/// ESC, CR, LF, TAB), DEL and C1 — is written as a visible escape (`\u{1b}`), and the result is
/// at most `maxCharacters` characters (longer text is cut and ends in `…`).
public enum PeerText {
    /// The longest peer text kept, in characters (before escaping).
    public static let maxCharacters = 512

    /// `text` with control characters escaped and its length bounded.
    public static func escape(_ text: String, maxCharacters: Int = PeerText.maxCharacters) -> String {
        var out = ""
        var count = 0
        for scalar in text.unicodeScalars {
            if count == maxCharacters { out += "…"; break }
            count += 1
            let v = scalar.value
            if v < 0x20 || (v >= 0x7F && v < 0xA0) || v == 0x2028 || v == 0x2029 || (v >= 0x202A && v <= 0x202E)
                || (v >= 0x2066 && v <= 0x2069) {
                out += "\\u{" + String(v, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

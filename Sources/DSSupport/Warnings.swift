import Glibc

/// Writes one line to stderr (fd 2) without touching C's `stderr` global. The library's default
/// warning sink; sessions take their own `warn` closure so an embedder can route warnings.
package func printWarning(_ line: String) {
    var s = line
    if !s.hasSuffix("\n") { s += "\n" }
    s.withUTF8 { b in _ = Glibc.write(2, b.baseAddress, b.count) }
}

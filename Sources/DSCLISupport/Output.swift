import Glibc
import DSSupport

/// Terminal and process facts the CLIs share.
package enum Output {
    /// Writes `text` to stderr as it is (no newline added): live progress lines.
    package static func stderrRaw(_ text: String) {
        var s = text
        s.withUTF8 { b in _ = Glibc.write(2, b.baseAddress, b.count) }
    }

    /// Writes `object` as one line of JSON to stdout, or stderr when stdout carries data.
    /// Total: non-finite numbers become null (`JSONText`); short writes are resumed.
    package static func jsonLine(_ object: [String: Any], toStderr: Bool = false) {
        var s = JSONText.encode(object) + "\n"
        s.withUTF8 { b in
            var rest = UnsafeRawBufferPointer(b)
            while !rest.isEmpty {
                let n = Glibc.write(toStderr ? 2 : 1, rest.baseAddress, rest.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                rest = UnsafeRawBufferPointer(rebasing: rest[n...])
            }
        }
    }

    /// This process's peak resident set size (VmHWM), in bytes; 0 when it cannot be read.
    package static func peakRSS() -> Int {
        let fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 8192)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return 0 }
        let text = String(decoding: bytes[0..<n], as: UTF8.self)
        for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            return (line.split(separator: " ").compactMap { Int($0) }.first ?? 0) * 1024
        }
        return 0
    }

    /// User plus system CPU seconds used by `who`: this process (the default), the calling
    /// thread (`rusageThread`), or the waited-for children (`RUSAGE_CHILDREN.rawValue`).
    package static func cpuSeconds(_ who: Int32 = RUSAGE_SELF.rawValue) -> Double {
        var ru = rusage()
        getrusage(who, &ru)
        return Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6 + Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6
    }

    /// RUSAGE_THREAD (Glibc's module does not import it).
    package static let rusageThread: Int32 = 1

    /// The median of `xs` (the upper one for an even count); 0 for none.
    package static func median(_ xs: [Double]) -> Double { xs.isEmpty ? 0 : xs.sorted()[xs.count / 2] }
}

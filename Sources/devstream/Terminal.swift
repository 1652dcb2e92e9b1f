import ArgumentParser
import DeviceStream
import Foundation
import Glibc
import DSSupport
import DSCLISupport
import DSWire
import DSCodec
import DSRing
import DSTransport
import DSDevices
import DSScheduler

enum Terminal {
    static var stderrIsTTY: Bool { isatty(2) == 1 }

    /// SIGPIPE and SIGXFSZ become errors (EPIPE, EFBIG) the code reports, not silent deaths.
    /// SIGINT, SIGTERM and SIGHUP are unblocked: a blocked mask is inherited across exec, and a
    /// parent that spawned devstream from a thread blocking them (a test runner, a VMM's worker
    /// thread) would otherwise get a devstream that `kill` cannot stop. They still stop it, but
    /// first remove what it would leave behind (`SignalCleanup`: a `FILE.partial`, the one-time
    /// key file).
    static func ignoreSignals() {
        signal(SIGPIPE, SIG_IGN)
        signal(SIGXFSZ, SIG_IGN)
        SignalCleanup.arm()
        var stop = sigset_t()
        sigemptyset(&stop)
        for s in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&stop, s) }
        pthread_sigmask(SIG_UNBLOCK, &stop, nil)
    }

    /// The `listening on HOST:PORT` line, flushed at once: the first stdout line, or a stderr
    /// line when stdout carries the data (`--output -`).
    static func announce(_ line: String, toStderr: Bool = false) {
        var s = line + "\n"
        s.withUTF8 { b in _ = Glibc.write(toStderr ? 2 : 1, b.baseAddress, b.count) }
    }

    static func line(_ s: String) {
        printWarning(s)
    }

    final class Ticker: @unchecked Sendable {
        // @unchecked: `stopped` is only read and written under `lock`.
        private let lock = ConditionLock()
        private var stopped = false
        private var thread: OSThread?
        init(_ body: @escaping @Sendable () -> Void) {
            // No thread, no progress line: a progress display is not worth failing the command.
            thread = try? OSThread(name: "ds-progress") { [self] in
                while true {
                    let done = lock.withLock { lock.wait(until: { stopped }, timeout: .milliseconds(250)) }
                    if done { return }
                    body()
                }
            }
        }
        /// Clears the live line so a normal line can be printed.
        func clearLine() { if Terminal.stderrIsTTY { Output.stderrRaw("\r\u{1B}[K") } }
        func stop() {
            lock.withLock { stopped = true; lock.broadcast() }
            thread?.join()
            if Terminal.stderrIsTTY { Output.stderrRaw("\r\u{1B}[K") }
        }
    }

    /// A live progress line on stderr, only when stderr is a terminal.
    static func progressTicker(_ p: TransferProgress, label: String) -> Ticker? {
        guard stderrIsTTY else { return nil }
        let start = Monotonic.now
        return Ticker {
            let b = p.bytes, t = p.total.load(ordering: .relaxed)
            let secs = max((Monotonic.now - start).seconds, 0.001)
            let pct = t == UInt64.max || t == 0 ? "" : String(format: " %5.1f%%", Double(b) * 100 / Double(t))
            Output.stderrRaw("\r\u{1B}[K\(label): \(Format.bytes(b))\(pct)  \(Format.rate(Double(b) / secs))")
        }
    }
}

enum Report {
    /// Prints `object` as one line of JSON on stdout (on stderr when stdout carries the data).
    static func json(_ object: [String: Any], toStderr: Bool = false) { Output.jsonLine(object, toStderr: toStderr) }

    /// An error line on stderr, then a `hint:` line when there is a hint (the library's errors
    /// name no CLI flag in their message; the hint does); control characters are escaped (a
    /// peer's words may be in either).
    static func errorLine(_ message: String, hint: String? = nil) {
        printWarning("devstream: error: \(PeerText.escape(message, maxCharacters: 4096))")
        if let hint { printWarning("devstream: hint: \(PeerText.escape(hint, maxCharacters: 4096))") }
    }

    static func errorLine(_ error: TransferError) { errorLine(error.message, hint: error.hint) }

    /// Reports a failure before a transfer started, and exits non-zero.
    static func fail(_ error: TransferError, json: Bool, extra: [String: Any], stdoutIsData: Bool = false) -> Never {
        if json {
            var o = extra
            o["status"] = "failed"; o["error"] = error.message
            if let h = error.hint { o["hint"] = h }
            Report.json(o, toStderr: stdoutIsData)
        }
        errorLine(error)
        exit(1)
    }

    static func finish(_ r: TransferReport, json: Bool, verb: String, compressionName: String, stdoutIsData: Bool = false) {
        if json {
            var o: [String: Any] = [
                "status": r.completed ? "completed" : "failed",
                "bytes": r.bytes, "wire_bytes": r.wireBytes, "chunks": r.chunks,
                "elapsed_ms": Format.ms(r.elapsed),
                "throughput_bytes_per_sec": r.throughput.rounded(),
                "connections": r.connections, "compression": compressionName,
                "io_backend": r.backend.rawValue,
                "protection": r.protection.rawValue,
                "peak_rss_bytes": Output.peakRSS(),
            ]
            if let d = r.digest { o["xxh3"] = TransferDigest.hex(d) }
            if let e = r.error {
                o["error"] = e.message
                if let h = e.hint { o["hint"] = h }
            }
            Report.json(o, toStderr: stdoutIsData)
        }
        if r.completed {
            let ratio = r.wireBytes > 0 ? String(format: ", ratio %.2f", Double(r.bytes) / Double(r.wireBytes)) : ""
            printWarning("devstream: \(verb) \(Format.bytes(r.bytes)) in \(String(format: "%.3f", r.elapsed.seconds)) s (\(Format.rate(r.throughput)), \(r.connections) connections, \(compressionName)\(ratio), \(r.protection.rawValue)), xxh3 \(r.digest.map(TransferDigest.hex) ?? "-")")
            exit(0)
        }
        if let e = r.error { errorLine(e) } else { errorLine("transfer failed") }
        exit(1)
    }
}

extension ValidationError {
    /// A usage error from a library error: its message, then its hint (which may name the
    /// flag) on a `hint:` line.
    init(_ error: TransferError) {
        self.init(error.hint.map { "\(error.message)\nhint: \($0)" } ?? error.message)
    }
}

import Glibc
import Synchronization

/// Files this process made and must not leave behind when a signal stops it: a receive's
/// `FILE.partial`, a file device's `PATH.partial`, the one-time key file `receive` writes.
///
/// Only a program that calls `arm()` (the `devstream` CLI) handles signals: an embedding VMM
/// keeps its own handlers, and for it `register` records nothing. Once armed, SIGINT, SIGTERM
/// and SIGHUP (each unless it was ignored when the process started: `nohup`, a background job
/// of a non-interactive shell) run a handler that only writes the signal number into a
/// non-blocking pipe (`write` is async-signal-safe; `errno` is saved and restored). A thread
/// reading that pipe removes every registered file, names them on stderr, restores the
/// default action and raises the signal again, so the parent still sees a death by that
/// signal (a shell prints it, `Process.terminationReason` says so).
/// SIGKILL cannot be handled: after it a `FILE.partial` stays until the next receive into
/// FILE replaces it, and a key file until someone removes it.
package enum SignalCleanup {
    private struct State {
        var armed = false
        var next = 1
        var paths: [Int: String] = [:]
    }
    private static let state = Mutex(State())
    /// The handler's pipe (write end); -1 until armed. Set once, before the handlers exist; an
    /// atomic so that the handler's read is one lock-free load, ordered after that store.
    private static let pipeWrite = Atomic<Int32>(-1)

    /// Installs the handlers and the thread that cleans up. Idempotent. Returns false (and
    /// handles nothing) if the pipe or the thread cannot be made.
    @discardableResult
    package static func arm() -> Bool {
        if state.withLock({ $0.armed }) { return true }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return false }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        // A full pipe (a storm of signals nobody reads any more) must not block the handler.
        _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
        let readEnd = fds[0]
        do {
            try OSThread(name: "ds-signals") {
                var signo: UInt8 = 0
                while true {
                    let n = read(readEnd, &signo, 1)
                    if n == 1 { break }
                    if n == 0 || errno != EINTR { return }
                }
                cleanUp(after: Int32(signo))
            }.detach()
        } catch {
            close(fds[0]); close(fds[1])
            return false
        }
        // Initialised here, before any handler exists: the handler's access is then the
        // already-initialised fast path of the static, one atomic load.
        pipeWrite.store(fds[1], ordering: .releasing)
        state.withLock { $0.armed = true }
        for s in [SIGINT, SIGTERM, SIGHUP] {
            var old = sigaction()
            // Ignored at exec (`nohup`, `cmd &` in a script): stay ignored, as before arming.
            if sigaction(s, nil, &old) == 0,
               unsafeBitCast(old.__sigaction_handler.sa_handler, to: Int.self) == 1 /* SIG_IGN */ { continue }
            signal(s) { sig in
                let saved = errno
                var b = UInt8(truncatingIfNeeded: sig)
                _ = write(SignalCleanup.pipeWrite.load(ordering: .acquiring), &b, 1)
                errno = saved
            }
        }
        return true
    }

    /// Records `path` for removal if a signal stops the process; 0 (nothing recorded) unless
    /// armed. Pass the result to `unregister` once the file is renamed, removed or handed over.
    package static func register(_ path: String) -> Int {
        state.withLock { s in
            guard s.armed else { return 0 }
            let id = s.next
            s.next += 1
            s.paths[id] = path
            return id
        }
    }

    /// Forgets a registration (0: none).
    package static func unregister(_ id: Int) {
        guard id != 0 else { return }
        _ = state.withLock { $0.paths.removeValue(forKey: id) }
    }

    /// The paths registered now, in registration order (tests).
    package static var registered: [String] {
        state.withLock { s in s.paths.sorted { $0.key < $1.key }.map(\.value) }
    }

    private static func cleanUp(after sig: Int32) {
        // Under the lock, so no registration is half made; a file renamed meanwhile is gone
        // from its registered name, and unlink finds nothing there.
        let removed = state.withLock { s -> [String] in
            let paths = s.paths.sorted { $0.key < $1.key }.map(\.value)
            s.paths.removeAll()
            return paths.filter { unlink($0) == 0 }
        }
        let name = sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : sig == SIGHUP ? "SIGHUP" : "signal \(sig)"
        if !removed.isEmpty {
            var line = "devstream: stopped by \(name); removed \(removed.map { "'\($0)'" }.joined(separator: ", "))\n"
            line.withUTF8 { b in _ = write(2, b.baseAddress, b.count) }
        }
        signal(sig, SIG_DFL)
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, sig)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        raise(sig)
        _exit(128 + sig)
    }
}

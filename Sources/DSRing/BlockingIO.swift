internal import CURing
import Glibc
import DSSupport

/// The blocking backend: each operation as a plain syscall on the calling thread. A socket
/// operation with a timeout polls first, then moves what it can (EAGAIN is retried by
/// `Ring.perform`), so it cannot outlive its timeout; SO_RCVTIMEO/SO_SNDTIMEO, where a caller
/// sets them, surface as EAGAIN and are reported as ETIMEDOUT.
enum BlockingIO {
    /// Runs `op`. With a `timeout`, socket sends and receives first poll for readiness and then
    /// move what they can without blocking, so no call outlives its timeout.
    static func run(_ op: IOOp, timeout: Duration? = nil) -> Result<Int, Errno> {
        let n: Int
        if let timeout {
            switch op {
            case .send(let fd, _): if let e = waitReady(fd, events: Int16(POLLOUT), timeout) { return .failure(e) }
            case .recv(let fd, _): if let e = waitReady(fd, events: Int16(POLLIN), timeout) { return .failure(e) }
            default: break
            }
        }
        let dontWait = timeout == nil ? Int32(0) : Int32(MSG_DONTWAIT)
        switch op {
        case .read(let fd, let b, let offset, _):
            n = offset == Ring.currentPosition ? Glibc.read(fd, b.baseAddress, b.count) : pread(fd, b.baseAddress, b.count, off_t(offset))
        case .write(let fd, let b, let offset, _):
            n = offset == Ring.currentPosition ? Glibc.write(fd, b.baseAddress, b.count) : pwrite(fd, b.baseAddress, b.count, off_t(offset))
        case .send(let fd, let b):
            n = Glibc.send(fd, b.baseAddress, b.count, Int32(MSG_NOSIGNAL) | dontWait)
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return .failure(.timedOut) }
        case .recv(let fd, let b):
            n = Glibc.recv(fd, b.baseAddress, b.count, dontWait)
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return .failure(.timedOut) }
        case .accept(let fd):
            n = Int(Glibc.accept(fd, nil, nil))
        case .connect(let fd, let address, let length):
            n = Int(Glibc.connect(fd, address.assumingMemoryBound(to: sockaddr.self), length))
        case .fsync(let fd):
            n = Int(Glibc.fsync(fd))
        }
        return n < 0 ? .failure(.current) : .success(n)
    }

    /// Polls `fd` for `events` up to `timeout`; nil when ready (or in error: the syscall that
    /// follows reports it), `.timedOut` when the time ran out.
    private static func waitReady(_ fd: Int32, events: Int16, _ timeout: Duration) -> Errno? {
        let (s, atto) = timeout.components
        let ms = Int32(clamping: s * 1000 + atto / 1_000_000_000_000_000)
        var p = pollfd(fd: fd, events: events, revents: 0)
        while true {
            let rc = poll(&p, 1, ms)
            if rc < 0 && errno == EINTR { continue }
            return rc == 0 ? .timedOut : nil
        }
    }
}

/// Which I/O backend a session runs on. The library reads no environment: a caller forces a
/// backend per session (`TransferOptions.backend`; `.blocking` for hosts whose seccomp filter
/// forbids io_uring), else the process-wide probe decides.
package enum IOBackend {
    /// Why io_uring cannot be used in this process (nil: it can). Probed once, on first use, by
    /// setting up and tearing down a tiny ring; never probed when every session forces a backend.
    package static let probeFailure: Errno? = probe()

    /// The probe's backend: io_uring when a ring can be set up here, else blocking. Silent: a
    /// session says why it fell back through its own `warn` (`resolve`).
    package static var probed: IOBackendKind { probeFailure == nil ? .ioUring : .blocking }

    /// The backend a session runs on: `forced` when the caller chose one (io_uring is then not
    /// probed at all, which matters under a seccomp filter that kills on io_uring_setup), else
    /// the probe's. When the probe fell back to blocking, says so once through `warn` (the
    /// session's: the library prints nothing of its own).
    package static func resolve(_ forced: IOBackendKind?, warn: (String) -> Void) -> IOBackendKind {
        if let forced { return forced }
        if let e = probeFailure { warn(fallbackWarning(e)) }
        return probed
    }

    /// The warning for a fallback to blocking syscalls because io_uring failed with `e`.
    package static func fallbackWarning(_ e: Errno) -> String {
        let why = e == .noSys ? "the kernel has no io_uring (ENOSYS)"
            : e == .notPermitted ? "io_uring is not permitted here (EPERM: seccomp or kernel.io_uring_disabled)"
            : e == .noMemory ? "could not set up an io_uring (ENOMEM: the rings of all of this user's processes count against RLIMIT_MEMLOCK)"
            : "io_uring setup failed (\(e))"
        let hint = e == .noMemory ? ". Raise `ulimit -l` (RLIMIT_MEMLOCK) for io_uring." : ""
        return "warning: \(why); falling back to blocking syscalls\(hint)"
    }

    /// Tries to set up a tiny ring; nil on success, else why not. Not cached (`probeFailure` is).
    package static func probe() -> Errno? {
        var r = io_uring()
        let rc = io_uring_queue_init(2, &r, 0)
        if rc < 0 { return Errno(rawValue: -rc) }
        io_uring_queue_exit(&r)
        return nil
    }
}

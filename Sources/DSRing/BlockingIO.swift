internal import CURing
import Glibc

/// The blocking backend: each operation as a plain syscall on the calling thread. Socket
/// timeouts come from SO_RCVTIMEO/SO_SNDTIMEO, which surface as EAGAIN and are reported as
/// ETIMEDOUT.
enum BlockingIO {
    static func run(_ op: IOOp) -> Result<Int, Errno> {
        let n: Int
        switch op {
        case .read(let fd, let b, let offset, _):
            n = offset == Ring.currentPosition ? Glibc.read(fd, b.baseAddress, b.count) : pread(fd, b.baseAddress, b.count, off_t(offset))
        case .write(let fd, let b, let offset, _):
            n = offset == Ring.currentPosition ? Glibc.write(fd, b.baseAddress, b.count) : pwrite(fd, b.baseAddress, b.count, off_t(offset))
        case .send(let fd, let b):
            n = Glibc.send(fd, b.baseAddress, b.count, Int32(MSG_NOSIGNAL))
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return .failure(.timedOut) }
        case .recv(let fd, let b):
            n = Glibc.recv(fd, b.baseAddress, b.count, 0)
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
}

/// Which backend this process uses, probed once.
public enum IOBackend {
    /// Set `DEVSTREAM_IO_BACKEND=blocking` to force the fallback (tests do), `io_uring` to
    /// require io_uring.
    public static let environmentKey = "DEVSTREAM_IO_BACKEND"

    /// The probe's result: io_uring when a ring can be set up here, else blocking. The first
    /// use prints one warning line on stderr when it falls back.
    public static let preferred: IOBackendKind = {
        if let forced = getenv(environmentKey).map({ String(cString: $0) }), forced == "blocking" {
            return .blocking
        }
        switch probe() {
        case nil: return .ioUring
        case let e?:
            let why = e == .noSys ? "the kernel has no io_uring (ENOSYS)"
                : e == .notPermitted ? "io_uring is not permitted here (EPERM: seccomp or kernel.io_uring_disabled)"
                : "io_uring setup failed (\(e))"
            printWarning("warning: \(why); falling back to blocking syscalls")
            return .blocking
        }
    }()

    /// Tries to set up a tiny ring; nil on success, else why not.
    public static func probe() -> Errno? {
        var r = io_uring()
        let rc = io_uring_queue_init(2, &r, 0)
        if rc < 0 { return Errno(rawValue: -rc) }
        io_uring_queue_exit(&r)
        return nil
    }
}

/// Writes one line to stderr (fd 2) without touching C's `stderr` global.
public func printWarning(_ line: String) {
    var s = line
    if !s.hasSuffix("\n") { s += "\n" }
    s.withUTF8 { b in _ = Glibc.write(2, b.baseAddress, b.count) }
}

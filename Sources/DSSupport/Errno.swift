import Glibc

/// A typed errno. `-errno` from liburing and `cqe.res`, and `errno` after a failed syscall, are
/// turned into this in one place (`Ring.complete`, `Errno.current`).
public struct Errno: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    /// The calling thread's `errno`.
    public static var current: Errno { Errno(rawValue: errno) }

    public static let interrupted = Errno(rawValue: EINTR)                  // EINTR
    public static let wouldBlock = Errno(rawValue: EAGAIN)                  // EAGAIN
    public static let timedOut = Errno(rawValue: ETIMEDOUT)                 // ETIMEDOUT
    public static let connectionReset = Errno(rawValue: ECONNRESET)         // ECONNRESET
    public static let connectionRefused = Errno(rawValue: ECONNREFUSED)     // ECONNREFUSED
    public static let brokenPipe = Errno(rawValue: EPIPE)                   // EPIPE
    public static let noSpace = Errno(rawValue: ENOSPC)                     // ENOSPC
    public static let fileTooLarge = Errno(rawValue: EFBIG)                 // EFBIG
    public static let noSys = Errno(rawValue: ENOSYS)                       // ENOSYS
    public static let notPermitted = Errno(rawValue: EPERM)                 // EPERM
    public static let canceled = Errno(rawValue: ECANCELED)                 // ECANCELED
    public static let invalid = Errno(rawValue: EINVAL)                     // EINVAL
    public static let noMemory = Errno(rawValue: ENOMEM)                    // ENOMEM

    /// The symbolic name (`ECONNREFUSED`), when it is one of the common ones.
    public var name: String? { Self.names[rawValue] }

    /// The one errno text every message uses: the C library's words and the name,
    /// "Connection refused (ECONNREFUSED)", or "… (errno 133)" for an uncommon one.
    public var description: String {
        let words = strerror(rawValue).map { String(cString: $0) } ?? "unknown error"
        return "\(words) (\(name ?? "errno \(rawValue)"))"
    }

    private static let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", EINTR: "EINTR", EIO: "EIO", EBADF: "EBADF", EAGAIN: "EAGAIN",
        ENOMEM: "ENOMEM", EACCES: "EACCES", EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST",
        ENODEV: "ENODEV", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", EMFILE: "EMFILE",
        ENOTTY: "ENOTTY", EFBIG: "EFBIG", ENOSPC: "ENOSPC", EPIPE: "EPIPE", ENOSYS: "ENOSYS",
        ENOMSG: "ENOMSG", E2BIG: "E2BIG", EOVERFLOW: "EOVERFLOW", ELOOP: "ELOOP", ECANCELED: "ECANCELED",
        ECONNRESET: "ECONNRESET", ECONNREFUSED: "ECONNREFUSED", ETIMEDOUT: "ETIMEDOUT",
        EADDRINUSE: "EADDRINUSE", EADDRNOTAVAIL: "EADDRNOTAVAIL", ENOTCONN: "ENOTCONN",
        EHOSTUNREACH: "EHOSTUNREACH", ENETUNREACH: "ENETUNREACH", EOPNOTSUPP: "EOPNOTSUPP",
    ]
}

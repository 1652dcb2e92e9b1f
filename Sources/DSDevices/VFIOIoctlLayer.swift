import Glibc

/// The syscalls `VFIODevice` makes, behind one funnel so tests can put a fake kernel under it.
///
/// Every call reports failure as `-errno` (never -1 plus `errno`), so no caller reads `errno`.
package protocol VFIOIoctlLayer: AnyObject, Sendable {
    /// `ioctl(fd, request, arg)`: `-errno` on failure, the ioctl's result (>= 0) on success.
    func ioctl(_ fd: Int32, _ request: UInt, _ arg: UnsafeMutableRawPointer) -> Int32
    /// `read(fd, buf)`: the count read, or `-errno`.
    func read(_ fd: Int32, _ buf: UnsafeMutableRawBufferPointer) -> Int
    /// `write(fd, buf)`: the count written, or `-errno`.
    func write(_ fd: Int32, _ buf: UnsafeRawBufferPointer) -> Int
    /// `open(path, O_RDWR | O_CLOEXEC)`: the fd, or `-errno`.
    func open(_ path: String) -> Int32
    /// `close(fd)`.
    func close(_ fd: Int32)
}

/// The real syscalls. `errno` is turned into `-errno` here, and only here; EINTR is retried here.
package final class SystemIoctlLayer: VFIOIoctlLayer {
    package init() {}

    /// Runs `call` until it does not fail with EINTR; a negative result becomes `-errno`.
    @inline(__always)
    private func retrying<R: BinaryInteger>(_ call: () -> R) -> R {
        while true {
            let r = call()
            if r >= 0 { return r }
            let e = errno
            if e == EINTR { continue }
            return R(-e)
        }
    }

    package func ioctl(_ fd: Int32, _ request: UInt, _ arg: UnsafeMutableRawPointer) -> Int32 {
        retrying { Glibc.ioctl(fd, request, arg) }
    }

    package func read(_ fd: Int32, _ buf: UnsafeMutableRawBufferPointer) -> Int {
        guard let base = buf.baseAddress, buf.count > 0 else { return 0 }
        return retrying { Glibc.read(fd, base, buf.count) }
    }

    package func write(_ fd: Int32, _ buf: UnsafeRawBufferPointer) -> Int {
        guard let base = buf.baseAddress, buf.count > 0 else { return 0 }
        return retrying { Glibc.write(fd, base, buf.count) }
    }

    package func open(_ path: String) -> Int32 {
        retrying { Glibc.open(path, O_RDWR | O_CLOEXEC) }
    }

    package func close(_ fd: Int32) {
        // Not retried on EINTR: on Linux the fd is released even when close reports EINTR.
        _ = Glibc.close(fd)
    }
}

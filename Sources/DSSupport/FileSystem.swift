import Glibc

/// Small file-system facts the file writers share (`FileSink` for transfers, `FileDevice` for
/// migrations): where a path's directory is, how much room it has, and making a rename durable.
package enum FileSystem {
    /// The directory holding `path` (`.` for a bare name, `/` for a top-level entry).
    package static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let dir = String(path[..<slash])
        return dir.isEmpty ? "/" : dir
    }

    /// Bytes an unprivileged writer may still use on the file system holding `path`'s
    /// directory; nil when it cannot be asked (a missing directory: the open that follows says so).
    package static func availableBytes(nearPath path: String) -> UInt64? {
        var vfs = statvfs()
        guard statvfs(directory(of: path), &vfs) == 0 else { return nil }
        let free = UInt64(vfs.f_bavail).multipliedReportingOverflow(by: UInt64(vfs.f_frsize))
        return free.overflow ? UInt64.max : free.partialValue
    }

    /// If `fd` is a pipe, asks the kernel for a pipe buffer of at least `bytes` (`F_SETPIPE_SZ`,
    /// capped at /proc/sys/fs/pipe-max-size, 1 MiB by default, even as root, whom the kernel
    /// would let pin more unswappable memory; halved until accepted, never below the default
    /// 64 KiB), best effort: a pipe that is already large enough, or anything that
    /// is not a pipe, is left alone.
    ///
    /// `send -` uses it with one chunk, so that a producer ahead of it has a whole chunk waiting
    /// at each read: a chunk is sent as soon as the input has nothing ready, and with 64 KiB a
    /// producer blocked on the full pipe is often not yet back when the reader has emptied it
    /// (1 GiB through `generate - | devstream send -` went out in 5177–7047 chunks, 150–200 KiB
    /// each, instead of 1024). The receiver's output pipe is left alone: growing it did not
    /// shorten the measured tail.
    /// - Returns: the pipe's buffer size afterwards (`F_GETPIPE_SZ`), or nil when `fd` is not a
    ///   pipe.
    @discardableResult
    package static func growPipe(_ fd: Int32, toHold bytes: Int) -> Int? {
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFIFO else { return nil }
        let setPipeSize: Int32 = 1031  // F_SETPIPE_SZ (Linux; Glibc's module does not import it)
        let getPipeSize: Int32 = 1032  // F_GETPIPE_SZ
        var size = Int32(clamping: bytes)
        if let max = pipeMaxSize() { size = min(size, max) }
        while size > 64 << 10, fcntl(fd, getPipeSize) < size, fcntl(fd, setPipeSize, size) < 0 { size /= 2 }
        return Int(fcntl(fd, getPipeSize))
    }

    /// /proc/sys/fs/pipe-max-size (nil when it cannot be read).
    package static func pipeMaxSize() -> Int32? {
        let fd = open("/proc/sys/fs/pipe-max-size", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 32)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return Int32(String(decoding: buf[0..<n].prefix { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self))
    }

    /// Fsyncs `path`'s directory, so a rename into it survives a crash (best effort).
    package static func syncDirectory(of path: String) {
        let d = open(directory(of: path), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if d >= 0 { fsync(d); close(d) }
    }
}

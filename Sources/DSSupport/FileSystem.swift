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

    /// Fsyncs `path`'s directory, so a rename into it survives a crash (best effort).
    package static func syncDirectory(of path: String) {
        let d = open(directory(of: path), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if d >= 0 { fsync(d); close(d) }
    }
}

/// `file:PATH`: a regular file or block device migrated as addressable state.
///
/// A source (`init(sourcePath:)`) is opened read-only and read whole; a destination
/// (`init(destinationPath:size:)`) is written whole: a regular file through `PATH.partial`
/// (created with O_EXCL | O_NOFOLLOW, sized to `size` only if the file system has the space),
/// renamed to `PATH` when the device reaches RUNNING — the migration loaded and verified it — and
/// removed if the device is closed before that, so a failed migration leaves neither; a block
/// device is written in place and must hold at least `size` bytes.
///
/// A file has no workload and nothing dirties it, so it has no pre-copy: its flags are
/// [STOP_COPY]. A source starts in RUNNING ("not being migrated yet"); the first
/// `takeDirtyChunks` after it enters STOP_COPY reports every chunk, later ones report none. The
/// config blob is 16 bytes (magic `DSFILCFG`, size), checked against the destination's size.
/// `digest()` is XXH3-64 of the file's first `size` bytes, streamed through a 1 MiB buffer.

import CXXHash
import Foundation
import DSRing
import DSSupport

public final class FileDevice: AddressableDevice, @unchecked Sendable {
    // Invariant: `lock` guards every mutable stored property (state, tracking flags, the fd).
    public let spec: String
    public let path: String
    public let size: UInt64
    public let trackingChunkSize: Int
    /// True for a device made with `init(destinationPath:size:)`.
    public let isDestination: Bool
    public var dataKind: DeviceDataKind { .addressable(size: size) }
    public let migrationFlags: VFIOMigrationFlags = [.stopCopy]

    static let configSize = 16
    static let configMagic: UInt64 = 0x4746_434C_4946_5344  // "DSFILCFG"
    static let blkGetSize64: UInt = 0x8008_1272

    private let lock = NSLock()
    private var current: VFIODeviceState
    private var initialPending = false
    private var fd: Int32
    private var closed = false
    /// A regular-file destination's `PATH.partial` until it is renamed to `PATH` (then nil).
    private var partialPath: String?
    /// Set once the handover committed this destination's state: never delete it then.
    private var keepPartial = false

    /// Opens `path` (a regular file or block device) as a source, in RUNNING.
    public init(sourcePath path: String, chunkSize: Int = 1 << 20) throws(DeviceError) {
        try Self.checkChunk(chunkSize, path)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw DeviceError(.io, "file device: cannot open '\(path)' for reading: \(errnoText()); check the path and its permissions")
        }
        do throws(DeviceError) {
            size = try Self.sizeOf(fd: fd, path: path)
        } catch {
            Glibc.close(fd)
            throw error
        }
        self.fd = fd
        self.path = path
        spec = "file:\(path)"
        trackingChunkSize = chunkSize
        isDestination = false
        current = .running
    }

    /// Opens `path` as a destination of `size` bytes, in RESUMING. A regular file is written as
    /// `PATH.partial` (see the type's summary); a block device must be at least `size` bytes.
    ///
    /// `size` comes from the source, so it is bounded here before anything is reserved: a regular
    /// file is refused when the file system does not have `size` bytes free (statvfs). A
    /// `PATH.partial` that exists is removed if it is a regular file owned by this user (a
    /// leftover), and refused otherwise (a symlink, say): nothing is ever written through it.
    public init(destinationPath path: String, size: UInt64, chunkSize: Int = 1 << 20) throws(DeviceError) {
        try Self.checkChunk(chunkSize, path)
        var st = stat()
        let exists = stat(path, &st) == 0
        let isBlock = exists && (st.st_mode & S_IFMT) == S_IFBLK
        if isBlock {
            let fd = open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else {
                throw DeviceError(.io, "file device: cannot open '\(path)' for writing: \(errnoText()); check the device's permissions")
            }
            let have: UInt64
            do throws(DeviceError) { have = try Self.sizeOf(fd: fd, path: path) } catch { Glibc.close(fd); throw error }
            guard have >= size else {
                Glibc.close(fd)
                throw DeviceError(.io, "file device: block device '\(path)' holds \(have) bytes but the source has \(size); use a larger device")
            }
            self.fd = fd
        } else {
            if exists && (st.st_mode & S_IFMT) == S_IFDIR {
                throw DeviceError(.badSpec, "file device: '\(path)' is a directory; give a file path")
            }
            try Self.checkFreeSpace(path: path, size: size)
            let partial = path + ".partial"
            let fd = try Self.createPartial(partial)
            guard let length = off_t(exactly: size), ftruncate(fd, length) == 0 else {
                let e = errnoText()
                Glibc.close(fd); unlink(partial)
                throw DeviceError(.io, "file device: cannot size '\(partial)' to \(size) bytes: \(e); check free space and the file-size limit")
            }
            self.fd = fd
            partialPath = partial
        }
        self.path = path
        self.size = size
        spec = "file:\(path)"
        trackingChunkSize = chunkSize
        isDestination = true
        current = .resuming
    }

    /// Creates `partial` for writing: O_CREAT | O_EXCL | O_NOFOLLOW, so it never writes through a
    /// symlink or into a file someone else made. A leftover regular file owned by this user (a
    /// crashed run's) is removed first; anything else there is refused.
    static func createPartial(_ partial: String) throws(DeviceError) -> Int32 {
        var lst = stat()
        if lstat(partial, &lst) == 0 {
            guard (lst.st_mode & S_IFMT) == S_IFREG, lst.st_uid == geteuid(), lst.st_nlink == 1 else {
                throw DeviceError(.io, "file device: '\(partial)' already exists and is not a leftover of ours (a symlink, another user's file, or not a regular file); nothing was written through it: remove it and retry")
            }
            unlink(partial)
        }
        let fd = open(partial, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw DeviceError(.io, "file device: cannot create '\(partial)': \(errnoText()); check that the directory exists and is writable and that no one else is writing there")
        }
        return fd
    }

    /// Refuses a size the file system holding `path` cannot take (statvfs of its directory).
    static func checkFreeSpace(path: String, size: UInt64) throws(DeviceError) {
        guard let available = FileSystem.availableBytes(nearPath: path), size > available else { return }
        throw DeviceError(.io, "file device: the source's device has \(size) bytes but only \(available) are free in '\(FileSystem.directory(of: path))'; free space or give a path on a larger file system")
    }

    /// Makes a regular-file destination's data durable (RESUMING → STOP: before the
    /// destination says `loaded`, so a failure here still leaves the source free to restart).
    private func syncLocked() throws(DeviceError) {
        guard let partial = partialPath else { return }
        guard fsync(fd) == 0 || errno == EINVAL || errno == EROFS else {
            throw DeviceError(.io, "file device: fsync of '\(partial)' failed: \(errnoText())")
        }
    }

    /// Puts a regular-file destination's (already synced) data under `PATH` (STOP → RUNNING,
    /// after the source's commit). From here the migrated state is never deleted: if the
    /// rename fails, it stays in `PATH.partial` and the error says so.
    private func commitLocked() throws(DeviceError) {
        guard let partial = partialPath else { return }
        keepPartial = true
        guard rename(partial, path) == 0 else {
            throw DeviceError(.io, "file device: cannot rename '\(partial)' to '\(path)': \(errnoText()); the migrated state is kept in '\(partial)'")
        }
        partialPath = nil
        FileSystem.syncDirectory(of: path)
    }

    deinit { close() }

    private static func checkChunk(_ chunkSize: Int, _ path: String) throws(DeviceError) {
        guard chunkSize >= 4096, chunkSize & (chunkSize - 1) == 0 else {
            throw DeviceError(.badSpec, "file device '\(path)': chunk size \(chunkSize) must be a power of two of at least 4K")
        }
    }

    private static func sizeOf(fd: Int32, path: String) throws(DeviceError) -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw DeviceError(.io, "file device: fstat of '\(path)' failed: \(errnoText())")
        }
        switch st.st_mode & S_IFMT {
        case S_IFREG:
            return UInt64(st.st_size)
        case S_IFBLK:
            var bytes: UInt64 = 0
            let rc = withUnsafeMutablePointer(to: &bytes) { ioctl(fd, blkGetSize64, $0) }
            guard rc == 0 else {
                throw DeviceError(.io, "file device: ioctl(BLKGETSIZE64) on block device '\(path)' failed: \(errnoText())")
            }
            return bytes
        default:
            throw DeviceError(.unsupported, "file device: '\(path)' is neither a regular file nor a block device; give a file or a block device path")
        }
    }

    private func checkOpen() throws(DeviceError) {
        if closed { throw DeviceError(.invalidState, "file device '\(path)': the device is closed; make a new one") }
    }

    public var state: VFIODeviceState {
        lock.lock(); defer { lock.unlock() }
        return current
    }

    public func setState(_ target: VFIODeviceState) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        try walkArcs(from: current, to: target, flags: migrationFlags, device: "file device") { (from, next) throws(DeviceError) in
            if VFIOStateMachine.isSaving(next) && !VFIOStateMachine.isSaving(from) { initialPending = true }
            if !VFIOStateMachine.isSaving(next) { initialPending = false }
            if isDestination && from == .resuming { try syncLocked() }
            // RUNNING on a destination: the migration loaded the whole state; only now is it
            // PATH (and only once it is, is the device RUNNING).
            if isDestination && VFIOStateMachine.isRunning(next) { try commitLocked() }
            current = next
        }
    }

    public func dataFD(for access: DeviceAccess) throws(DeviceError) -> Int32 {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        switch access {
        case .save: guard VFIOStateMachine.isSaving(current) else { throw accessError("file device", .save, current, preCopy: false) }
        case .load: guard current == .resuming else { throw accessError("file device", .load, current) }
        }
        return fd
    }

    public func takeDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard VFIOStateMachine.isSaving(current) else {
            throw DeviceError(.invalidState, "file device: cannot take dirty chunks in state \(vfioName(current)); a file is read in STOP_COPY")
        }
        if initialPending {
            initialPending = false
            let count = (size + UInt64(trackingChunkSize) - 1) / UInt64(trackingChunkSize)
            chunks.reserveCapacity(chunks.count + Int(count))
            for i in 0 ..< count { chunks.append(i) }
        }
    }

    public func peekDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard initialPending else { return }
        let count = (size + UInt64(trackingChunkSize) - 1) / UInt64(trackingChunkSize)
        for i in 0 ..< count { chunks.append(i) }
    }

    public func dirtyByteCount() -> UInt64 {
        lock.lock(); defer { lock.unlock() }
        return VFIOStateMachine.isSaving(current) && !initialPending ? 0 : size
    }

    public func precopyInfo() throws(DeviceError) -> PrecopyInfo {
        throw DeviceError(.invalidState, "file device: no pre-copy info; a file device has no PRE_COPY state (its migration flags are [STOP_COPY])")
    }

    public func stopCopySize() throws(DeviceError) -> UInt64 {
        dirtyByteCount() + UInt64(Self.configSize)
    }

    public func saveConfig() throws(DeviceError) -> [UInt8] {
        var out: [UInt8] = []
        out.appendLE(Self.configMagic)
        out.appendLE(size)
        return out
    }

    public func loadConfig(_ bytes: [UInt8]) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard current == .resuming else {
            throw DeviceError(.invalidState, "file device: cannot load a config in state \(vfioName(current)); configs are loaded in RESUMING only")
        }
        guard bytes.count == Self.configSize, bytes.loadLE(at: 0, as: UInt64.self) == Self.configMagic else {
            throw DeviceError(.malformedStream, "file device: config of \(bytes.count) bytes has no DSFILCFG magic; the source is not a file device or the config is corrupt")
        }
        guard bytes.loadLE(at: 8, as: UInt64.self) == size else {
            throw DeviceError(.malformedStream, "file device: config is for \(bytes.loadLE(at: 8, as: UInt64.self)) bytes but '\(path)' was opened for \(size); open the destination with the source's size")
        }
    }

    /// XXH3-64 of the first `size` bytes, read with `pread` through a 1 MiB buffer.
    public func digest() throws(DeviceError) -> UInt64 {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        let hasher = XXH3Stream()
        let bufSize = 1 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: bufSize, alignment: 4096)
        defer { buf.deallocate() }
        var offset: UInt64 = 0
        while offset < size {
            let want = Int(min(UInt64(bufSize), size - offset))
            let n = pread(fd, buf, want, off_t(offset))
            if n < 0 {
                if errno == EINTR { continue }
                throw DeviceError(.io, "file device: pread of '\(path)' at offset \(offset) failed: \(errnoText())")
            }
            if n == 0 {
                throw DeviceError(.io, "file device: '\(path)' ended at \(offset) bytes, expected \(size); the file changed size during migration")
            }
            hasher.update(buf, n)
            offset += UInt64(n)
        }
        return hasher.digest
    }

    public func close() {
        lock.lock(); defer { lock.unlock() }
        if closed { return }
        closed = true
        Glibc.close(fd)
        fd = -1
        // Never renamed: the migration did not complete, so no partial state is left behind
        // (unless the handover committed it: then it is the only copy).
        if let partial = partialPath, !keepPartial { unlink(partial); partialPath = nil }
    }
}

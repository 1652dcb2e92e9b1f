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

import Glibc
import DSSupport

public final class FileDevice: AddressableDevice {
    public let spec: String
    public let path: String
    public let size: UInt64
    public let trackingChunkSize: Int
    /// True for a device made with `init(destinationPath:size:)`.
    public let isDestination: Bool
    public var dataKind: DeviceDataKind { .addressable(size: size) }
    public var migrationFlags: VFIOMigrationFlags { core.flags }

    static let config = ConfigBlob(magic: 0x4746_434C_4946_5344, count: 16, kind: "file device")  // "DSFILCFG"
    static let blkGetSize64: UInt = 0x8008_1272

    /// What the lock guards besides the state.
    struct Handle: Sendable {
        var fd: Int32
        /// The next take reports every chunk.
        var initialPending = false
        /// A regular-file destination's `PATH.partial` until it is renamed to `PATH` (then nil).
        var partialPath: String?
        /// Set once the handover committed this destination's state: never delete it then.
        var keepPartial = false
        /// `partialPath`'s registration with `SignalCleanup`, dropped once it must be kept.
        var cleanup = 0
    }

    private let core: DeviceCore<Handle>

    /// Opens `path` (a regular file or block device) as a source, in RUNNING.
    public init(sourcePath path: String, chunkSize: Int = 1 << 20) throws(DeviceError) {
        try Self.checkChunk(chunkSize, path)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw DeviceError(.io, "file device: cannot open '\(path)' for reading: \(Errno.current); check the path and its permissions")
        }
        do throws(DeviceError) {
            size = try Self.sizeOf(fd: fd, path: path)
        } catch {
            Glibc.close(fd)
            throw error
        }
        self.path = path
        spec = "file:\(path)"
        trackingChunkSize = chunkSize
        isDestination = false
        core = DeviceCore(name: "file device '\(path)'", flags: [.stopCopy], state: .running, inner: Handle(fd: fd))
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
        var handle: Handle
        if isBlock {
            let fd = open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else {
                throw DeviceError(.io, "file device: cannot open '\(path)' for writing: \(Errno.current); check the device's permissions")
            }
            let have: UInt64
            do throws(DeviceError) { have = try Self.sizeOf(fd: fd, path: path) } catch { Glibc.close(fd); throw error }
            guard have >= size else {
                Glibc.close(fd)
                throw DeviceError(.io, "file device: block device '\(path)' holds \(have) bytes but the source has \(size); use a larger device")
            }
            handle = Handle(fd: fd)
        } else {
            if exists && (st.st_mode & S_IFMT) == S_IFDIR {
                throw DeviceError(.badSpec, "file device: '\(path)' is a directory; give a file path")
            }
            try Self.checkFreeSpace(path: path, size: size)
            let partial = path + ".partial"
            let fd = try Self.createPartial(partial)
            guard let length = off_t(exactly: size), ftruncate(fd, length) == 0 else {
                let e = Errno.current
                Glibc.close(fd); unlink(partial)
                throw DeviceError(.io, "file device: cannot size '\(partial)' to \(size) bytes: \(e); check free space and the file-size limit")
            }
            handle = Handle(fd: fd)
            handle.partialPath = partial
            handle.cleanup = SignalCleanup.register(partial)
        }
        self.path = path
        self.size = size
        spec = "file:\(path)"
        trackingChunkSize = chunkSize
        isDestination = true
        core = DeviceCore(name: "file device '\(path)'", flags: [.stopCopy], state: .resuming, inner: handle)
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
            throw DeviceError(.io, "file device: cannot create '\(partial)': \(Errno.current); check that the directory exists and is writable and that no one else is writing there")
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
    private static func sync(_ handle: Handle) throws(DeviceError) {
        guard let partial = handle.partialPath else { return }
        guard fsync(handle.fd) == 0 || errno == EINVAL || errno == EROFS else {
            throw DeviceError(.io, "file device: fsync of '\(partial)' failed: \(Errno.current)")
        }
    }

    /// Puts a regular-file destination's (already synced) data under `PATH` (STOP → RUNNING,
    /// after the source's commit). From here the migrated state is never deleted: if the
    /// rename fails, it stays in `PATH.partial` and the error says so.
    private func commit(_ handle: inout Handle) throws(DeviceError) {
        guard let partial = handle.partialPath else { return }
        handle.keepPartial = true
        guard rename(partial, path) == 0 else {
            throw DeviceError(.io, "file device: cannot rename '\(partial)' to '\(path)': \(Errno.current); the migrated state is kept in '\(partial)'")
        }
        handle.partialPath = nil
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
            throw DeviceError(.io, "file device: fstat of '\(path)' failed: \(Errno.current)")
        }
        switch st.st_mode & S_IFMT {
        case S_IFREG:
            return UInt64(st.st_size)
        case S_IFBLK:
            var bytes: UInt64 = 0
            let rc = withUnsafeMutablePointer(to: &bytes) { ioctl(fd, blkGetSize64, $0) }
            guard rc == 0 else {
                throw DeviceError(.io, "file device: ioctl(BLKGETSIZE64) on block device '\(path)' failed: \(Errno.current)")
            }
            return bytes
        default:
            throw DeviceError(.unsupported, "file device: '\(path)' is neither a regular file nor a block device; give a file or a block device path")
        }
    }

    public var state: VFIODeviceState { core.state }

    public func setState(_ target: VFIODeviceState) throws(DeviceError) {
        try core.transition(to: target) { (arc, locked) throws(DeviceError) in
            if arc.startsSaving { locked.inner.initialPending = true }
            if !VFIOStateMachine.isSaving(arc.to) { locked.inner.initialPending = false }
            if isDestination && arc.from == .resuming {
                try Self.sync(locked.inner)
                // Loaded and synced: from the `loaded` that follows, the source may commit and
                // give up its copy at any moment, so a signal must no longer remove this one.
                SignalCleanup.unregister(locked.inner.cleanup)
                locked.inner.cleanup = 0
            }
            // RUNNING on a destination: the migration loaded the whole state; only now is it
            // PATH (and only once it is, is the device RUNNING).
            if isDestination && VFIOStateMachine.isRunning(arc.to) { try commit(&locked.inner) }
        }
    }

    public func dataFD(for access: DeviceAccess) throws(DeviceError) -> Int32 {
        try core.withOpen(for: access) { locked in locked.inner.fd }
    }

    private var chunkCount: UInt64 { (size + UInt64(trackingChunkSize) - 1) / UInt64(trackingChunkSize) }

    public func takeDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) {
        try core.withOpen(in: VFIOStateMachine.savingStates, to: "take dirty chunks") { locked in
            guard locked.inner.initialPending else { return }
            locked.inner.initialPending = false
            chunks.reserveCapacity(chunks.count + Int(chunkCount))
            for i in 0 ..< chunkCount { chunks.append(i) }
        }
    }

    public func peekDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) {
        try core.withOpen { locked in
            guard locked.inner.initialPending else { return }
            for i in 0 ..< chunkCount { chunks.append(i) }
        }
    }

    public func dirtyByteCount() -> UInt64 {
        core.withLock { locked in
            VFIOStateMachine.isSaving(locked.state) && !locked.inner.initialPending ? 0 : size
        }
    }

    /// A file has no PRE_COPY state (its migration flags are [STOP_COPY]): this always throws.
    public func precopyInfo() throws(DeviceError) -> PrecopyInfo {
        try core.check(state, in: [.preCopy, .preCopyP2P], to: "report pre-copy info")
        return PrecopyInfo(initialBytes: 0, dirtyBytes: 0)
    }

    public func stopCopySize() throws(DeviceError) -> UInt64 {
        dirtyByteCount() + UInt64(Self.config.count)
    }

    public func saveConfig() throws(DeviceError) -> [UInt8] {
        try core.saveConfig { _ in Self.config.head(size: size) }
    }

    public func loadConfig(_ bytes: [UInt8]) throws(DeviceError) {
        try core.loadConfig(bytes, format: Self.config, size: size)
    }

    /// XXH3-64 of the first `size` bytes, read with `pread` through a 1 MiB buffer.
    public func digest() throws(DeviceError) -> UInt64 {
        try core.withOpen { (locked) throws(DeviceError) -> UInt64 in
            let bufSize = 1 << 20
            let hasher: XXH3Stream
            let buf: UnsafeMutableRawPointer
            do {
                hasher = try XXH3Stream()
                buf = try AlignedMemory.allocate(byteCount: bufSize, alignment: 4096)
            } catch {
                throw DeviceError(.io, "file device: cannot allocate the hash state and 1 MiB buffer to digest '\(path)': \(error); free some memory and retry")
            }
            defer { AlignedMemory.free(buf) }
            var offset: UInt64 = 0
            while offset < size {
                let want = Int(min(UInt64(bufSize), size - offset))
                let n = pread(locked.inner.fd, buf, want, off_t(offset))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw DeviceError(.io, "file device: pread of '\(path)' at offset \(offset) failed: \(Errno.current)")
                }
                if n == 0 {
                    throw DeviceError(.io, "file device: '\(path)' ended at \(offset) bytes, expected \(size); the file changed size during migration")
                }
                hasher.update(buf, n)
                offset += UInt64(n)
            }
            return hasher.digest
        }
    }

    public func close() {
        core.close { handle in
            Glibc.close(handle.fd)
            handle.fd = -1
            // Never renamed: the migration did not complete, so no partial state is left behind
            // (unless the handover committed it: then it is the only copy).
            if let partial = handle.partialPath, !handle.keepPartial { unlink(partial); handle.partialPath = nil }
            SignalCleanup.unregister(handle.cleanup)
            handle.cleanup = 0
        }
    }
}

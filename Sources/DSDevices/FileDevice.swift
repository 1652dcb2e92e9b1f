/// `file:PATH`: a regular file or block device migrated as addressable state.
///
/// A source (`init(sourcePath:)`) is opened read-only and read whole; a destination
/// (`init(destinationPath:size:)`) is opened for writing (a regular file is created or truncated
/// to `size`; a block device must hold at least `size` bytes) and written whole.
///
/// A file has no workload and nothing dirties it, so it has no pre-copy: its flags are
/// [STOP_COPY]. A source starts in RUNNING ("not being migrated yet"); the first
/// `takeDirtyChunks` after it enters STOP_COPY reports every chunk, later ones report none. The
/// config blob is 16 bytes (magic `DSFILCFG`, size), checked against the destination's size.
/// `digest()` is XXH3-64 of the file's first `size` bytes, streamed through a 1 MiB buffer.

import CXXHash
import Foundation

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

    /// Opens `path` as a destination of `size` bytes, in RESUMING: a regular file is created or
    /// truncated to `size`; a block device must be at least `size` bytes.
    public init(destinationPath path: String, size: UInt64, chunkSize: Int = 1 << 20) throws(DeviceError) {
        try Self.checkChunk(chunkSize, path)
        var st = stat()
        let exists = stat(path, &st) == 0
        let isBlock = exists && (st.st_mode & S_IFMT) == S_IFBLK
        let fd = isBlock ? open(path, O_RDWR | O_CLOEXEC) : open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw DeviceError(.io, "file device: cannot open '\(path)' for writing: \(errnoText()); check that the directory exists and is writable")
        }
        if isBlock {
            let have: UInt64
            do throws(DeviceError) { have = try Self.sizeOf(fd: fd, path: path) } catch { Glibc.close(fd); throw error }
            guard have >= size else {
                Glibc.close(fd)
                throw DeviceError(.io, "file device: block device '\(path)' holds \(have) bytes but the source has \(size); use a larger device")
            }
        } else if ftruncate(fd, off_t(size)) != 0 {
            let e = errnoText()
            Glibc.close(fd)
            throw DeviceError(.io, "file device: cannot size '\(path)' to \(size) bytes: \(e); check free space")
        }
        self.fd = fd
        self.path = path
        self.size = size
        spec = "file:\(path)"
        trackingChunkSize = chunkSize
        isDestination = true
        current = .resuming
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
        appendLE(&out, Self.configMagic)
        appendLE(&out, size)
        return out
    }

    public func loadConfig(_ bytes: [UInt8]) throws(DeviceError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard current == .resuming else {
            throw DeviceError(.invalidState, "file device: cannot load a config in state \(vfioName(current)); configs are loaded in RESUMING only")
        }
        guard bytes.count == Self.configSize, readLE64(bytes, 0) == Self.configMagic else {
            throw DeviceError(.malformedStream, "file device: config of \(bytes.count) bytes has no DSFILCFG magic; the source is not a file device or the config is corrupt")
        }
        guard readLE64(bytes, 8) == size else {
            throw DeviceError(.malformedStream, "file device: config is for \(readLE64(bytes, 8)) bytes but '\(path)' was opened for \(size); open the destination with the source's size")
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
    }
}

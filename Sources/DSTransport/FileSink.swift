import Glibc
import Synchronization
import DSRing
import DSWire
import DSSupport

/// Where a receiver writes: a regular file (through `FILE.partial`, renamed only once the whole
/// transfer is verified), a device written in place, or stdout (`-`).
package final class FileSink: @unchecked Sendable {
    // @unchecked: `fd`, paths and flags are immutable after init; `next` and `covered` are
    // guarded by `turn`.
    package let path: String
    package let fd: Int32
    /// The file written until the transfer is verified (nil when writing in place).
    package let partialPath: String?
    /// Whether writes may go at offsets (else they go in order, by chunk index).
    package let seekable: Bool
    /// How the channels write it: `.inline` (pwrite on the channel thread) for a file on tmpfs,
    /// where io_uring would punt every write to a worker thread; else through the ring.
    package var ioPath: FileIOPath { writer.path }
    /// The channels' writes (inline ones serialised: see `SharedFileWriter`).
    private let writer: SharedFileWriter
    private let ownsFD: Bool
    private let turn = ConditionLock()
    private var next: UInt64 = 0
    private var nextOffset: UInt64 = 0
    /// Chunks received: every index below `coveredBelow`, plus those in `coveredAbove`. Memory
    /// follows what actually arrived out of order, never a size claimed by the peer.
    private var coveredBelow: UInt64 = 0
    private var coveredAbove = Set<UInt64>()
    private var finished = false
    /// `partialPath`'s registration with `SignalCleanup` (0: none).
    private var cleanup = 0

    /// The size to reserve for a regular file, once the session has shown valid data.
    private let reserveSize: UInt64?
    private let reserved = Atomic<Bool>(false)

    /// Opens the output. A regular file is written as `FILE.partial`, created with O_EXCL |
    /// O_NOFOLLOW (never through a symlink); a leftover `FILE.partial` that is a regular file
    /// owned by this user is removed first, anything else there (a symlink, another user's file)
    /// fails the receive and is left alone.
    ///
    /// `size` is the sender's claim, so nothing is reserved for it yet: a claim larger than the
    /// file system's free space fails now, before any file is created, and the space is
    /// preallocated (`reserveOnce`) only when the first verified data frame arrives — a lone
    /// hostile preamble reserves nothing.
    package init(path: String, size: UInt64?) throws(TransferError) {
        self.path = path
        if path == "-" {
            fd = 1; ownsFD = false; partialPath = nil; seekable = false; reserveSize = nil; writer = SharedFileWriter(fd: 1)
            return
        }
        var st = stat()
        let exists = stat(path, &st) == 0
        let kind = exists ? st.st_mode & S_IFMT : S_IFREG
        if kind == S_IFDIR {
            throw TransferError(.usage, "output '\(path)' is a directory; give a file path, a device, or - for stdout")
        }
        if kind == S_IFREG {
            let partial = path + ".partial"
            if let size { try Self.checkFreeSpace(path: path, size: size) }
            var lst = stat()
            if lstat(partial, &lst) == 0 {
                guard (lst.st_mode & S_IFMT) == S_IFREG, lst.st_uid == geteuid(), lst.st_nlink == 1 else {
                    throw TransferError(.localIO, "cannot write '\(partial)': it already exists and is not a leftover of ours (a symlink, another user's file, or not a regular file); nothing was written through it: remove it and retry")
                }
                unlink(partial)  // a crashed run's leftover
            }
            let f = open(partial, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
            guard f >= 0 else {
                let e = Errno.current
                throw TransferError(.localIO, "cannot write '\(partial)': \(e); check that the directory exists and is writable and that no other receive writes there")
            }
            fd = f; ownsFD = true; partialPath = partial; seekable = true
            writer = SharedFileWriter(fd: f)
            cleanup = SignalCleanup.register(partial)
            // tmpfs has no unwritten extents: posix_fallocate there allocates and zeroes every
            // page of the output before the writes overwrite it (perf: 17% of a 1 GiB
            // tmpfs-to-tmpfs transfer's CPU time; the first touch of the new pages, most of it
            // on this VM, the writes now pay instead, the zeroing pass is saved). The
            // free-space check above already refused a claim that cannot fit, so on tmpfs the
            // pages are allocated by the writes that fill them.
            reserveSize = writer.path.isInline ? nil : size.flatMap { $0 > 0 ? $0 : nil }
        } else {
            let f = open(path, O_WRONLY | O_CLOEXEC)
            guard f >= 0 else {
                let e = Errno.current
                throw TransferError(.localIO, "cannot open '\(path)' for writing: \(e)")
            }
            fd = f; ownsFD = true; partialPath = nil; reserveSize = nil
            seekable = lseek(f, 0, SEEK_CUR) >= 0
            writer = SharedFileWriter(fd: f)
        }
    }

    /// Refuses a claimed size the file system holding `path` cannot take (statvfs of its directory).
    static func checkFreeSpace(path: String, size: UInt64) throws(TransferError) {
        guard let available = FileSystem.availableBytes(nearPath: path), size > available else { return }
        throw TransferError(.localIO, "the sender's transfer has \(size) bytes but only \(available) are free in '\(FileSystem.directory(of: path))'; nothing was written: free space, or write the output on a larger file system",
                            hint: "give an --output on a larger file system")
    }

    /// Preallocates the whole output once, after the first verified data frame (so a full disk
    /// or a file-size limit fails before more bytes move, but only for a peer that sends data).
    func reserveOnce() throws(TransferError) {
        guard let size = reserveSize, !reserved.load(ordering: .acquiring) else { return }
        // `reserved` turns true only once the call returned, and other channels wait on the lock
        // meanwhile: glibc's fallback for a file system without fallocate writes into each block,
        // which must not race a channel's data write.
        let rc = turn.withLock { () -> Int32 in
            guard !reserved.load(ordering: .relaxed) else { return 0 }
            let rc = off_t(exactly: size).map { posix_fallocate(fd, 0, $0) } ?? EFBIG
            reserved.store(true, ordering: .releasing)
            return rc
        }
        if rc != 0 && rc != EOPNOTSUPP && rc != EINVAL {
            throw TransferError(.localIO, "cannot reserve \(size) bytes for '\(path)': \(Errno(rawValue: rc)); free space or raise the file-size limit")
        }
    }

    deinit { if ownsFD { close(fd) } }

    /// Marks chunk `index` received; false if it was already (a duplicate).
    func cover(_ index: UInt64) -> Bool {
        turn.withLock {
            guard index >= coveredBelow, coveredAbove.insert(index).inserted else { return false }
            while coveredAbove.remove(coveredBelow) != nil { coveredBelow += 1 }
            return true
        }
    }

    /// Chunks received so far (each exactly once).
    var coveredCount: UInt64 { turn.withLock { coveredBelow + UInt64(coveredAbove.count) } }

    /// Writes a chunk at `offset` through `ring` (WRITE_FIXED from `slot` where registered).
    ///
    /// **Zero pages stay holes.** Into a regular file's `FILE.partial` (a file this receive
    /// created, O_EXCL, where `cover` lets each chunk be written once and `commit` sets the
    /// size), a 4 KiB page of zeros is not written: what is never written reads as zeros, a
    /// hole on tmpfs and most file systems, an unwritten extent where `reserveOnce` allocated.
    /// Only the runs of non-zero pages are written (`SharedFileWriter.writeScattered`). What it
    /// saves is the page-cache work for those pages, on tmpfs the largest cost of the receiver
    /// after decompression: allocating, charging and inserting each page and copying into it.
    /// `qemu-img convert` and `cp --sparse` leave holes the same way. Devices, stdout and
    /// anything written in place get every byte.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, ring: Ring, slot: Int) throws(TransferError) {
        let page = ExtentTable.page
        guard partialPath != nil, offset % UInt64(page) == 0, let base = bytes.baseAddress else {
            if let e = writer.write(bytes, at: offset, ring: ring, slot: slot) { throw writeFailure(e) }
            return
        }
        // A chunk without zero pages is one run, one write.
        let failure = writer.writeScattered(ring: ring, slot: slot) { add in
            var i = 0
            var run = -1  // start of the current run of non-zero pages
            while i < bytes.count {
                let n = min(page, bytes.count - i)
                if ExtentTable.isZero(base + i, n) {
                    if run >= 0 { add(UnsafeRawBufferPointer(rebasing: bytes[run..<i]), offset + UInt64(run)); run = -1 }
                } else if run < 0 {
                    run = i
                }
                i += n
            }
            if run >= 0 { add(UnsafeRawBufferPointer(rebasing: bytes[run..<bytes.count]), offset + UInt64(run)) }
        }
        if let failure { throw writeFailure(failure) }
    }

    /// Writes chunk `index` (at `offset`, `length` bytes) from a frame that left out its zero
    /// pages (`FrameFlags.zeroPages`; `packed` is its validated table over the frame's bytes in
    /// `slot`). Into this receive's own `FILE.partial` only the extents are written, and the
    /// zero pages stay holes as in `write`. Every other output gets the whole chunk: it is
    /// rebuilt in `spare` (the channel's other slot, free once the frame is decoded), zeros
    /// and all, then written at its offset, or in order where the output cannot seek.
    func writePacked(_ packed: ExtentTable.View, index: UInt64, at offset: UInt64, length: Int, ring: Ring, slot: Int,
                     spare: UnsafeMutableRawBufferPointer, spareSlot: Int,
                     timeout: Duration, abort: AbortSignal) throws(TransferError) {
        if partialPath != nil {
            let failure = writer.writeScattered(ring: ring, slot: slot) { add in
                packed.forEach { at, bytes in add(bytes, offset + at) }
            }
            if let failure { throw writeFailure(failure) }
            return
        }
        precondition(spare.count >= length)
        let base = spare.baseAddress!
        var filled = 0
        packed.forEach { at, bytes in
            let start = Int(at)
            if start > filled { memset(base + filled, 0, start - filled) }
            (base + start).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            filled = start + bytes.count
        }
        if filled < length { memset(base + filled, 0, length - filled) }
        let chunk = UnsafeRawBufferPointer(rebasing: spare[0..<length])
        if seekable {
            if let e = writer.write(chunk, at: offset, ring: ring, slot: spareSlot) { throw writeFailure(e) }
        } else {
            try writeInOrder(chunk, index: index, ring: ring, slot: spareSlot, timeout: timeout, abort: abort)
        }
    }

    /// Writes chunk number `index` in order: waits until every earlier chunk is written. The
    /// wait is bounded by `timeout` and ends early when the session aborts.
    func writeInOrder(_ bytes: UnsafeRawBufferPointer, index: UInt64, ring: Ring, slot: Int,
                      timeout: Duration, abort: AbortSignal) throws(TransferError) {
        let mine = turn.withLock { turn.wait(until: { next == index || abort.isAborted || next > index }, timeout: timeout) && next == index }
        if let e = abort.error { throw e }
        guard mine else {
            let n = turn.withLock { next }
            if n > index { throw TransferError(.protocolViolation, "duplicate stream chunk \(index)") }
            throw TransferError(.timeout, "waited too long for stream chunk \(n) while holding chunk \(index); the peer stalled")
        }
        // Only the turn holder touches `nextOffset` until it advances `next`.
        let offset = seekable ? turn.withLock { nextOffset } : Ring.currentPosition
        if let e = writer.write(bytes, at: offset, ring: ring, slot: slot) { throw writeFailure(e) }
        turn.withLock { next += 1; nextOffset += UInt64(bytes.count); turn.broadcast() }
    }

    /// Chunks written in order so far.
    var writtenInOrder: UInt64 { turn.withLock { next } }

    /// Wakes in-order writers so they see an abort.
    func wake() { turn.withLock { turn.broadcast() } }

    private func writeFailure(_ e: Errno) -> TransferError {
        let hint = e == .noSpace ? "; the disk is full"
            : e == .fileTooLarge ? "; the file-size limit (ulimit -f) was reached"
            : e == .brokenPipe ? "; the reader of the output went away" : ""
        return TransferError(.localIO, "writing '\(path)' failed: \(e)\(hint)")
    }

    /// Syncs and, for a regular file, renames `FILE.partial` to `FILE` (and syncs the directory).
    /// Only called once the whole transfer is verified.
    func commit(size: UInt64?) throws(TransferError) {
        if let size, partialPath != nil, let length = off_t(exactly: size), ftruncate(fd, length) != 0 {
            throw TransferError(.localIO, "cannot set the size of '\(partialPath!)': \(Errno.current)")
        }
        if fsync(fd) != 0 {
            let e = Errno.current
            if e != .invalid && e.rawValue != EROFS { throw TransferError(.localIO, "fsync of '\(path)' failed: \(e)") }
        }
        guard let partial = partialPath else { finished = true; return }
        guard rename(partial, path) == 0 else {
            throw TransferError(.localIO, "cannot rename '\(partial)' to '\(path)': \(Errno.current)")
        }
        finished = true
        SignalCleanup.unregister(cleanup)
        FileSystem.syncDirectory(of: path)
    }

    /// Removes the partial file after a failure: a truncated file never sits under FILE's name.
    package func discard() {
        guard !finished, let partial = partialPath else { return }
        unlink(partial)
        SignalCleanup.unregister(cleanup)
        finished = true
    }
}

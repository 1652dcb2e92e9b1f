internal import CURing
import Glibc
import DSSupport

/// Which I/O engine a ring runs on.
public enum IOBackendKind: String, Sendable {
    /// io_uring, created on the thread that uses it (`IORING_SETUP_SINGLE_ISSUER`, and
    /// `IORING_SETUP_DEFER_TASKRUN` where the kernel has it).
    case ioUring = "io_uring"
    /// Blocking syscalls on the same thread: the fallback when io_uring cannot be set up
    /// (ENOSYS, or EPERM from seccomp or `kernel.io_uring_disabled`).
    case blocking
}

/// One I/O operation. Buffers are borrowed: they must stay valid until the operation completes.
package enum IOOp {
    /// Read into `buffer` at `offset` (`Ring.currentPosition` for pipes and stdin). With `slot`
    /// of a registered pool this is `IORING_OP_READ_FIXED`.
    case read(fd: Int32, buffer: UnsafeMutableRawBufferPointer, offset: UInt64, slot: Int?)
    /// Write from `buffer` at `offset`; `IORING_OP_WRITE_FIXED` with a registered slot.
    case write(fd: Int32, buffer: UnsafeRawBufferPointer, offset: UInt64, slot: Int?)
    /// `IORING_OP_SEND` with MSG_NOSIGNAL.
    case send(fd: Int32, buffer: UnsafeRawBufferPointer)
    /// `IORING_OP_RECV`.
    case recv(fd: Int32, buffer: UnsafeMutableRawBufferPointer)
    /// `IORING_OP_ACCEPT`: the result is the new socket.
    case accept(fd: Int32)
    /// `IORING_OP_CONNECT` to `address` (a sockaddr of `length` bytes, valid until completion).
    case connect(fd: Int32, address: UnsafeRawPointer, length: UInt32)
    /// `IORING_OP_FSYNC`.
    case fsync(fd: Int32)

    package var kind: IOOpKind {
        switch self {
        case .read: .read
        case .write: .write
        case .send: .send
        case .recv: .recv
        case .accept: .accept
        case .connect: .connect
        case .fsync: .fsync
        }
    }

    /// The same operation over at most `n` bytes (used by fault injection to force short I/O).
    func shortened(to n: Int) -> IOOp {
        switch self {
        case .read(let fd, let b, let o, let s): .read(fd: fd, buffer: UnsafeMutableRawBufferPointer(rebasing: b[0..<min(n, b.count)]), offset: o, slot: s)
        case .write(let fd, let b, let o, let s): .write(fd: fd, buffer: UnsafeRawBufferPointer(rebasing: b[0..<min(n, b.count)]), offset: o, slot: s)
        case .send(let fd, let b): .send(fd: fd, buffer: UnsafeRawBufferPointer(rebasing: b[0..<min(n, b.count)]))
        case .recv(let fd, let b): .recv(fd: fd, buffer: UnsafeMutableRawBufferPointer(rebasing: b[0..<min(n, b.count)]))
        default: self
        }
    }
}

package enum IOOpKind: Sendable, Hashable { case read, write, send, recv, accept, connect, fsync }

/// How a channel moves bytes to and from one file: through the ring, or with a plain
/// `pread`/`pwrite` on the calling thread.
///
/// io_uring completes a buffered read or write inline only on a file system that supports
/// non-blocking buffered I/O (FMODE_NOWAIT: ext4, xfs, btrfs, block devices). tmpfs and memfds
/// (shmem) do not, so every READ/WRITE on them is punted to an io-wq worker thread (`iou-wrk-*`).
/// A channel keeps one operation in flight and waits for it, so the punt buys no overlap; it
/// only adds a wakeup, two context switches, and a copy made on another core than the one whose
/// cache holds the slot. perf on a 1 GiB tmpfs-to-tmpfs transfer put the workers at 37% of
/// devstream's CPU time (the receiver's writes 29%, the sender's reads 7%). On shmem a buffered
/// read or write is a copy to or from the page cache that never waits for a disk, so doing it on
/// the channel's own thread blocks that thread on nothing but the copy it needs anyway.
package enum FileIOPath: Sendable, Equatable {
    /// io_uring READ/WRITE (the FIXED forms from registered slots).
    case ring
    /// `pread`/`pwrite` on the calling thread (files on shmem: tmpfs, memfd).
    case inline

    /// The path for `fd`: `.inline` for a regular file on shmem (statfs type TMPFS_MAGIC), else
    /// `.ring` (other file systems, block and character devices, pipes, sockets).
    package static func forFile(_ fd: Int32) -> FileIOPath {
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return .ring }
        return UInt64(ds_fs_type(fd)) == tmpfsMagic ? .inline : .ring
    }

    /// TMPFS_MAGIC from <linux/magic.h> (tmpfs, /dev/shm, memfd).
    static let tmpfsMagic: UInt64 = 0x0102_1994

    /// Whether a file on this path is read or written on the calling thread.
    package var isInline: Bool { self == .inline }
}

/// Writes into one file (an output, a device's load fd) from several channel threads, each
/// through its own ring, or inline for a file on shmem (`FileIOPath.inline`), one writer at a
/// time.
///
/// Why one at a time: a tmpfs write holds the file's inode lock (i_rwsem) for its whole copy,
/// and a second channel writing the same file spins on that lock in the kernel
/// (`rwsem_spin_on_owner`) while the copy runs: perf on a loaded 2-core machine put 28% of the
/// receiver's CPU time there. The writes are serial either way; waiting here sleeps on a futex
/// instead of burning the core the other end of the transfer needs.
package final class SharedFileWriter: @unchecked Sendable {
    // @unchecked: `fd` and `path` are immutable; `inlineWrites` is a pthread mutex.
    package let fd: Int32
    package let path: FileIOPath
    private let inlineWrites = ConditionLock()

    /// `fd` stays the caller's: this never closes it.
    package init(fd: Int32) {
        self.fd = fd
        path = FileIOPath.forFile(fd)
    }

    /// Writes all of `bytes` at `offset` (`Ring.currentPosition`: at the file position) from
    /// `slot` of `ring`'s registered pool; nil when it all went, else the error.
    /// Allocates nothing (a local function capturing a `var` would box it on the heap per call).
    package func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, ring: Ring, slot: Int?) -> Errno? {
        guard path.isInline else { return writeNow(bytes, at: offset, ring: ring, slot: slot) }
        return inlineWrites.withLock { writeNow(bytes, at: offset, ring: ring, slot: slot) }
    }

    /// Writes pieces of one slot at their offsets (a `pages` frame's extents): `body` calls
    /// `add(bytes, offset)` for each, in order; nil when all went, else the first error. Through
    /// the ring many are in flight at once (`Ring.writeScattered`); inline, one `pwrite` each,
    /// under the lock taken once for the whole frame.
    package func writeScattered(ring: Ring, slot: Int?,
                                _ body: (_ add: (UnsafeRawBufferPointer, UInt64) -> Void) -> Void) -> Errno? {
        guard path.isInline else {
            do { try ring.writeScattered(fd: fd, slot: slot, body) } catch { return error }
            return nil
        }
        return inlineWrites.withLock {
            var failure: Errno?
            body { bytes, offset in
                guard failure == nil else { return }
                failure = writeNow(bytes, at: offset, ring: ring, slot: slot)
            }
            return failure
        }
    }

    private func writeNow(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, ring: Ring, slot: Int?) -> Errno? {
        do { try ring.writeAll(fd: fd, bytes, offset: offset, slot: slot, path: path) } catch { return error }
        return nil
    }
}

/// What a fault injector does to one submission. Faults are injected at the one funnel every
/// operation passes through (`Ring.submit`), for both backends, and, with the same type, at the
/// one socket send that has no ring (`SocketSend.sendAll` with a `FaultPlan`).
package enum InjectedFault: Sendable {
    /// Run the operation as asked.
    case none
    /// Run it over at most this many bytes (a short read, write, send or recv).
    case short(Int)
    /// Do not run it; complete it with this errno (EINTR, EAGAIN, ECONNRESET, ...).
    case fail(Errno)
}

/// A fault plan: called for every submission with its kind and byte count.
package typealias FaultInjector = (IOOpKind, Int) -> InjectedFault

/// A completed operation.
package struct Completion: Sendable {
    package var userData: UInt64
    /// Bytes moved, the new fd (accept), or 0.
    package var result: Result<Int, Errno>
}

/// An io_uring instance (or its blocking stand-in) owned by one thread for its whole life.
///
/// Create it on the thread that uses it and never hand it to another: the kernel ties
/// requests to their submitting thread (`SINGLE_ISSUER`; a request dies with its thread).
/// The synchronous helpers (`perform`, `readFully`, `writeAll`, `sendAll`, `recvExactly`) retry
/// EINTR and EAGAIN and resume short transfers in one place (sends: `SocketSend`).
package final class Ring {
    /// `Ring.currentPosition` as an offset means "the file position" (pipes, stdin, sockets).
    package static let currentPosition = UInt64.max

    package let backend: IOBackendKind
    /// Set when io_uring was asked for but this ring runs blocking syscalls because setting it
    /// up failed with ENOMEM (see `init`): a warning line for the user. `Channel` prints it.
    package let setupWarning: String?
    private let uring: UnsafeMutablePointer<io_uring>?
    private var blockingQueue: [Completion] = []
    private var blockingHead = 0
    /// Slots of `pool` registered with the kernel (0 ..< registeredSlots use the FIXED ops).
    package private(set) var registeredSlots = 0
    private var registeredPool: BufferPool?
    /// Faults to inject (tests). nil in production.
    package var faultInjector: FaultInjector?
    private var inFlight = 0
    private var nextOperationID: UInt64 = 0
    /// `writeScattered`'s pieces in flight: bytes, offset, bytes written, done. Reused.
    private var scatterPending: [(bytes: UnsafeRawBufferPointer, offset: UInt64, written: Int, done: Bool)] = []
    /// The timeout of the operation being performed, for the blocking backend's poll.
    private var blockingTimeout: Duration?
    /// user_data values at or above this are the ring's own (cancellations).
    static let internalUserData = UInt64.max - 1
    /// The most reads `readBatch` keeps in flight at once: the submission queue's size.
    package let batchWindow: Int
    /// Per in-flight read of a batch: its buffer, length, offset and result (allocated once, so
    /// a batch allocates nothing).
    private let batchBuffers: UnsafeMutableBufferPointer<UnsafeMutableRawPointer?>
    private let batchLengths: UnsafeMutableBufferPointer<Int>
    private let batchOffsets: UnsafeMutableBufferPointer<UInt64>
    private let batchResults: UnsafeMutableBufferPointer<Int>

    /// Creates a ring on the calling thread.
    ///
    /// **ENOMEM falls back to blocking syscalls, for this ring.** The kernel charges every
    /// ring's memory to RLIMIT_MEMLOCK for users without CAP_IPC_LOCK, summed over all of the
    /// user's processes: with `ulimit -l 64` (a common default) eight 64-entry rings fit, for
    /// the sender and the receiver together when one user runs both. So the process-wide probe
    /// (`IOBackend`) can succeed and a later channel's ring fail, depending on what else the
    /// user has open, and rings closed a moment ago are uncharged only when the kernel's
    /// deferred teardown gets to them. Such a ring runs on the blocking backend instead, as a
    /// channel with no io_uring at all would, and `setupWarning` says why; a session then has
    /// rings of both kinds, each owned by one thread. Other errors are thrown.
    /// - Parameter backend: nil picks `IOBackend.probed` (probed once per process). Sessions
    ///   pass their own (`IOBackend.resolve`).
    package init(entries: UInt32 = 64, backend: IOBackendKind? = nil) throws(Errno) {
        batchWindow = Int(max(1, entries))
        var kind = backend ?? IOBackend.probed
        var ring: UnsafeMutablePointer<io_uring>?
        var warning: String?
        if kind == .ioUring {
            let r = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
            r.initialize(to: io_uring())
            var rc: Int32
            if let e = ResourceFaults.injected(.ring) {
                rc = -e.rawValue
            } else {
                rc = io_uring_queue_init(entries, r, ds_setup_single_issuer() | ds_setup_defer_taskrun())
                if rc == -EINVAL { rc = io_uring_queue_init(entries, r, ds_setup_single_issuer()) }
                if rc == -EINVAL { rc = io_uring_queue_init(entries, r, 0) }
            }
            if rc == 0 {
                ring = r
            } else {
                r.deallocate()
                guard rc == -ENOMEM else { throw Errno(rawValue: -rc) }
                kind = .blocking
                warning = IOBackend.fallbackWarning(.noMemory)
            }
        }
        self.backend = kind
        uring = ring
        setupWarning = warning
        batchBuffers = .allocate(capacity: batchWindow)
        batchLengths = .allocate(capacity: batchWindow)
        batchOffsets = .allocate(capacity: batchWindow)
        batchResults = .allocate(capacity: batchWindow)
        if ring == nil { blockingQueue.reserveCapacity(Int(entries)) }
    }

    deinit {
        batchBuffers.deallocate(); batchLengths.deallocate(); batchOffsets.deallocate(); batchResults.deallocate()
        if let r = uring {
            if registeredSlots > 0 { io_uring_unregister_buffers(r) }
            io_uring_queue_exit(r)
            r.deallocate()
        }
    }

    /// Registers `pool`'s slots as fixed buffers, once. When RLIMIT_MEMLOCK (or ENOMEM) refuses
    /// them all, registers fewer — halving until it fits — or none, and returns a warning line.
    /// - Returns: nil when every slot was registered (or the blocking backend needs none),
    ///   else a warning for the user.
    @discardableResult
    package func register(_ pool: BufferPool) -> String? {
        precondition(registeredPool == nil, "a ring registers one pool, once")
        registeredPool = pool
        guard let r = uring else { return nil }
        var count = pool.slotCount
        var lastError: Int32 = 0
        while count > 0 {
            var iovecs = (0..<count).map { iovec(iov_base: pool.base + $0 * pool.slotSize, iov_len: pool.slotSize) }
            let rc = iovecs.withUnsafeMutableBufferPointer { io_uring_register_buffers(r, $0.baseAddress, UInt32(count)) }
            if rc == 0 { break }
            lastError = -rc
            guard rc == -ENOMEM || rc == -EPERM || rc == -EFAULT else { count = 0; break }
            count /= 2
        }
        registeredSlots = count
        if count == pool.slotCount { return nil }
        let why = Errno(rawValue: lastError)
        return count == 0
            ? "warning: could not register I/O buffers (\(why)); using unregistered I/O. Raise `ulimit -l` (RLIMIT_MEMLOCK) for zero-copy fixed buffers."
            : "warning: registered \(count) of \(pool.slotCount) I/O buffers (\(why)); raise `ulimit -l` (RLIMIT_MEMLOCK) to register all."
    }

    // MARK: - The submission and completion funnel

    /// Operations run inline (`FileIOPath.inline`) so far: a test shows a file on shmem took
    /// that path.
    package private(set) var inlineOperations = 0

    /// Queues one operation. With io_uring it becomes an SQE (sent to the kernel by the next
    /// `wait`); with the blocking backend, or `inline` (a file read or write of
    /// `FileIOPath.inline`), it runs now on this thread and its completion is queued.
    package func submit(_ op: IOOp, userData: UInt64, inline: Bool = false) {
        var op = op
        if let inject = faultInjector {
            switch inject(op.kind, op.byteCount) {
            case .none: break
            case .short(let n): op = op.shortened(to: max(1, n))
            case .fail(let e):
                // Not run: completes with the injected error, through the same path.
                blockingQueue.append(Completion(userData: userData, result: .failure(e)))
                return
            }
        }
        guard let r = uring, !inline else {
            if inline { inlineOperations += 1 }
            blockingQueue.append(Completion(userData: userData, result: BlockingIO.run(op, timeout: blockingTimeout)))
            return
        }
        var sqe = io_uring_get_sqe(r)
        var submitted: Int32 = 0
        if sqe == nil {
            submitted = io_uring_submit(r)
            sqe = io_uring_get_sqe(r)
        }
        guard let sqe else {
            // The kernel took none of the queued entries (io_uring_submit: EAGAIN, EBUSY or
            // ENOMEM under memory pressure): a resource failure, so the operation completes
            // with it instead of trapping (EBUSY for EAGAIN, which `perform` would retry forever).
            let e = submitted < 0 && submitted != -EAGAIN ? Errno(rawValue: -submitted) : Errno(rawValue: EBUSY)
            blockingQueue.append(Completion(userData: userData, result: .failure(e)))
            return
        }
        prepare(sqe, op)
        io_uring_sqe_set_data64(sqe, userData)
        inFlight += 1
    }

    private func prepare(_ sqe: UnsafeMutablePointer<io_uring_sqe>, _ op: IOOp) {
        switch op {
        case .read(let fd, let b, let offset, let slot):
            if let slot, slot < registeredSlots {
                io_uring_prep_read_fixed(sqe, fd, b.baseAddress, UInt32(b.count), offset, Int32(slot))
            } else {
                io_uring_prep_read(sqe, fd, b.baseAddress, UInt32(b.count), offset)
            }
        case .write(let fd, let b, let offset, let slot):
            if let slot, slot < registeredSlots {
                io_uring_prep_write_fixed(sqe, fd, b.baseAddress, UInt32(b.count), offset, Int32(slot))
            } else {
                io_uring_prep_write(sqe, fd, b.baseAddress, UInt32(b.count), offset)
            }
        case .send(let fd, let b):
            io_uring_prep_send(sqe, fd, b.baseAddress, b.count, Int32(MSG_NOSIGNAL))
        case .recv(let fd, let b):
            io_uring_prep_recv(sqe, fd, b.baseAddress, b.count, 0)
        case .accept(let fd):
            io_uring_prep_accept(sqe, fd, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
        case .connect(let fd, let address, let length):
            io_uring_prep_connect(sqe, fd, address.assumingMemoryBound(to: sockaddr.self), length)
        case .fsync(let fd):
            io_uring_prep_fsync(sqe, fd, 0)
        }
    }

    /// Waits for the next completion. `-errno` becomes `Errno` here, and only here.
    /// - Parameter timeout: nil waits forever; on expiry the in-flight operations are
    ///   cancelled and `Errno.timedOut` is thrown.
    package func wait(timeout: Duration? = nil) throws(Errno) -> Completion {
        if blockingHead < blockingQueue.count {
            let c = blockingQueue[blockingHead]
            blockingHead += 1
            if blockingHead == blockingQueue.count { blockingQueue.removeAll(keepingCapacity: true); blockingHead = 0 }
            return c
        }
        guard let r = uring else { preconditionFailure("wait() with nothing submitted") }
        precondition(inFlight > 0, "wait() with nothing submitted")
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        var rc: Int32
        io_uring_submit(r)
        repeat {
            if let timeout {
                let (s, atto) = timeout.components
                var ts = __kernel_timespec(tv_sec: s, tv_nsec: atto / 1_000_000_000)
                rc = io_uring_wait_cqe_timeout(r, &cqe, &ts)
            } else {
                rc = io_uring_wait_cqe(r, &cqe)
            }
        } while rc == -EINTR || (rc >= 0 && cqe == nil)
        if rc == -ETIME {
            cancelAll()
            throw .timedOut
        }
        guard rc >= 0, let cqe else { throw Errno(rawValue: -rc) }
        let res = cqe.pointee.res
        let data = io_uring_cqe_get_data64(cqe)
        io_uring_cqe_seen(r, cqe)
        inFlight -= 1
        return Completion(userData: data, result: res < 0 ? .failure(Errno(rawValue: -res)) : .success(Int(res)))
    }

    /// Cancels every in-flight operation and reaps them, so their buffers are free again.
    /// Cancels every in-flight operation and reaps them all, so no buffer is still in the
    /// kernel's hands when this returns (a cancel is re-sent each second until they are).
    package func cancelAll() {
        guard let r = uring, inFlight > 0 else { return }
        var needCancel = true
        while inFlight > 0 {
            if needCancel, let sqe = io_uring_get_sqe(r) {
                io_uring_prep_cancel64(sqe, 0, Int32(IORING_ASYNC_CANCEL_ANY))
                io_uring_sqe_set_data64(sqe, Ring.internalUserData)
                inFlight += 1
                needCancel = false
            }
            var cqe: UnsafeMutablePointer<io_uring_cqe>?
            var ts = __kernel_timespec(tv_sec: 1, tv_nsec: 0)
            io_uring_submit(r)
            let rc = io_uring_wait_cqe_timeout(r, &cqe, &ts)
            if rc == -EINTR { continue }
            if rc == -ETIME { needCancel = true; continue }
            guard rc >= 0, let cqe else { needCancel = true; continue }
            io_uring_cqe_seen(r, cqe)
            inFlight -= 1
        }
    }

    // MARK: - Synchronous helpers (one operation in flight)

    /// Runs one operation to completion, retrying EINTR and EAGAIN. Each submission has its own
    /// `user_data`; a completion that is not its own (left over from a cancelled operation) is
    /// dropped.
    /// - Parameter inline: run it on this thread (`FileIOPath.inline`; file reads and writes only).
    package func perform(_ op: IOOp, timeout: Duration? = nil, inline: Bool = false) throws(Errno) -> Int {
        while true {
            nextOperationID &+= 1
            if nextOperationID >= Ring.internalUserData { nextOperationID = 1 }
            let id = nextOperationID
            blockingTimeout = timeout
            submit(op, userData: id, inline: inline)
            var c = try wait(timeout: timeout)
            while c.userData != id { c = try wait(timeout: timeout) }
            switch c.result {
            case .success(let n): return n
            case .failure(let e) where e == .interrupted || e == .wouldBlock: continue
            case .failure(let e): throw e
            }
        }
    }

    /// Reads until `buffer` is full or end of file; returns the count read.
    /// - Parameter path: `.inline` reads with `pread` on this thread (see `FileIOPath`).
    package func readFully(fd: Int32, into buffer: UnsafeMutableRawBufferPointer, offset: UInt64,
                          slot: Int? = nil, path: FileIOPath = .ring) throws(Errno) -> Int {
        var done = 0
        while done < buffer.count {
            let at = offset == Ring.currentPosition ? offset : offset + UInt64(done)
            let n = try perform(.read(fd: fd, buffer: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), offset: at, slot: slot),
                                inline: path.isInline)
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Reads an ordered input (a pipe, stdin, a socket: from its current position) into `buffer`
    /// until the buffer is full, the input ends, or the input has **nothing more ready**; returns
    /// the count read (0: the input ended).
    ///
    /// The first read waits for data; each later one is made only while `poll` says the input is
    /// readable now. This is TCP_NODELAY for a stream source: a producer that pauses (QEMU
    /// writing its last bytes into `devstream send -`, then waiting) gets its partial chunk sent
    /// at once rather than held until more input or its end, while a producer that keeps the
    /// input full still fills whole chunks (every read returns data at once).
    ///
    /// **Tail pieces.** With `tailPiece`, a chunk that the input cannot fill now (`FIONREAD`
    /// says it holds less than the chunk's free space) stops at `tailPiece` bytes and leaves the
    /// rest in the input for the next read. The first read, which waits for data, takes at most
    /// a piece for the same reason; the chunk then grows to a whole one if the input holds the
    /// rest (one more read: steady input). That is the end of a burst: the producer wrote its
    /// last bytes and waits, and up to a chunk of them sits in the (grown) pipe. Taken whole, that
    /// chunk passes read, compression, the sockets, decompression and the output one stage after
    /// another on one channel; in pieces, the channels and both ends work on them at once (the
    /// receiver decompresses the first piece while the sender compresses the second). An input
    /// that holds a whole chunk's worth still fills whole chunks, so a producer that keeps the
    /// pipe full (steady input) is not cut into pieces.
    /// - Warning: `fd` must be pollable for the "nothing ready" rule to apply; one that polls as
    ///   always readable (a character device) fills whole chunks like `readFully`. An `fd`
    ///   without `FIONREAD` (it fails) never splits.
    package func readWhileReady(fd: Int32, into buffer: UnsafeMutableRawBufferPointer, slot: Int? = nil,
                                tailPiece: Int? = nil) throws(Errno) -> Int {
        var done = 0
        while done < buffer.count {
            if done > 0 && !Ring.readableNow(fd) { break }
            var end = buffer.count
            if let tailPiece, tailPiece < buffer.count, let ready = Ring.bytesReady(fd), done + ready < buffer.count {
                // Less than the chunk's free space is ready (none at all before the first, waiting
                // read): a piece, then stop unless a whole chunk's worth has come in meanwhile.
                if done >= tailPiece { break }
                end = tailPiece
            }
            let n = try perform(.read(fd: fd, buffer: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<end]),
                                      offset: Ring.currentPosition, slot: slot))
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// The bytes a read of `fd` would find now (`FIONREAD`: a pipe's or socket's queue), or nil
    /// where the call fails (a file type without it).
    package static func bytesReady(_ fd: Int32) -> Int? {
        var count: Int32 = 0
        return ioctl(fd, 0x541B /* FIONREAD */, &count) == 0 ? Int(count) : nil
    }

    /// Whether a read of `fd` would return at once (data, end of input or an error): `poll`
    /// with no wait. A failed poll counts as readable, so the caller reads (and blocks, or sees
    /// the error) as it would have without asking.
    package static func readableNow(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let rc = poll(&p, 1, 0)
            if rc >= 0 { return rc > 0 }
            if errno != EINTR { return true }
        }
    }

    /// Reads `count` pieces of one file, each into its own buffer: the extents of a `pages` frame
    /// gathered behind their table. Returns nil when every piece was read whole, else the first
    /// piece that met end of file and the bytes it got.
    ///
    /// Through the ring, up to `batchWindow` reads go to the kernel in one `io_uring_enter` and
    /// are reaped together: a frame of 256 scattered 4 KiB pages takes 256 / window submissions
    /// instead of 256 submit-and-wait round trips (one syscall each, and on a file system that
    /// punts to io-wq, one worker wakeup each; a batch lets the workers take them back to back).
    /// A short read is finished afterwards with `readFully`, once the batch is reaped (a
    /// `perform` with other reads in flight would drop their completions). `.inline` reads
    /// them one `pread` at a time: there is no vectored read of scattered file offsets.
    /// - Parameter piece: the buffer and file offset of piece `i`; called once per index, in
    ///   increasing order (so a caller can keep a running position).
    package func readBatch(fd: Int32, count: Int, slot: Int? = nil, path: FileIOPath = .ring,
                          piece: (Int) -> (UnsafeMutableRawBufferPointer, UInt64)) throws(Errno) -> (index: Int, got: Int)? {
        guard uring != nil, !path.isInline else {
            for i in 0..<count {
                let (b, o) = piece(i)
                let n = try readFully(fd: fd, into: b, offset: o, slot: slot, path: path)
                if n < b.count { return (i, n) }
            }
            return nil
        }
        var first = 0
        while first < count {
            let n = min(batchWindow, count - first)
            try runWindow(n, { k in
                let (b, o) = piece(first + k)
                batchBuffers[k] = b.baseAddress; batchLengths[k] = b.count; batchOffsets[k] = o
                return .read(fd: fd, buffer: b, offset: o, slot: slot)
            }, { k, result in
                switch result {
                case .success(let got): batchResults[k] = got
                case .failure(let e): batchResults[k] = -Int(e.rawValue)
                }
            })
            for k in 0..<n {
                let buffer = UnsafeMutableRawBufferPointer(start: batchBuffers[k], count: batchLengths[k])
                var got = batchResults[k]
                if got < 0 {
                    let e = Errno(rawValue: Int32(-got))
                    guard e == .interrupted || e == .wouldBlock else { throw e }
                    // Retried whole, as `perform` would.
                    got = try readFully(fd: fd, into: buffer, offset: batchOffsets[k], slot: slot)
                    if got < buffer.count { return (first + k, got) }
                    continue
                }
                if got < buffer.count {
                    if got == 0 { return (first + k, 0) }
                    let rest = try readFully(fd: fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[got...]),
                                             offset: batchOffsets[k] + UInt64(got), slot: slot)
                    if got + rest < buffer.count { return (first + k, got + rest) }
                }
            }
            first += n
        }
        return nil
    }

    /// Writes all of `buffer` at `offset`, resuming short writes.
    /// - Parameter path: `.inline` writes with `pwrite` on this thread (see `FileIOPath`).
    package func writeAll(fd: Int32, _ buffer: UnsafeRawBufferPointer, offset: UInt64, slot: Int? = nil,
                         path: FileIOPath = .ring) throws(Errno) {
        var done = 0
        while done < buffer.count {
            let at = offset == Ring.currentPosition ? offset : offset + UInt64(done)
            let n = try perform(.write(fd: fd, buffer: UnsafeRawBufferPointer(rebasing: buffer[done...]), offset: at, slot: slot),
                                inline: path.isInline)
            guard n > 0 else { throw Errno(rawValue: EIO) }
            done += n
        }
    }

    /// Writes pieces of one registered slot (or plain memory) at their offsets, many in flight at
    /// once: `body` calls `add(bytes, offset)` for each piece, in order. The pieces are listed
    /// first, then go to the kernel in windows of `Ring.scatterDepth`: a window is submitted
    /// whole and reaped whole before the next, so a `pages` frame of isolated 4 KiB extents costs
    /// about one `io_uring_enter` per window, not one per write (a window that slid one write at
    /// a time made one per write). A short write is resumed piece by piece (`writeAll`). Every
    /// write has completed when this returns or throws (the first error, after its window was
    /// reaped). Allocates nothing once `scatterPending` has grown: no local function captures a
    /// `var` here (that would box it on the heap per call).
    package func writeScattered(fd: Int32, slot: Int?,
                                _ body: (_ add: (UnsafeRawBufferPointer, UInt64) -> Void) -> Void) throws(Errno) {
        scatterPending.removeAll(keepingCapacity: true)
        body { bytes, offset in
            if !bytes.isEmpty { self.scatterPending.append((bytes, offset, 0, false)) }
        }
        var first = 0
        while first < scatterPending.count {
            let n = min(Ring.scatterDepth, scatterPending.count - first)
            var failure: Errno?
            try runWindow(n, { k in
                let p = scatterPending[first + k]
                return .write(fd: fd, buffer: p.bytes, offset: p.offset, slot: slot)
            }, { k, result in
                let i = first + k
                switch result {
                case .success(let w) where w == scatterPending[i].bytes.count: scatterPending[i].done = true
                case .success(let w) where w > 0: scatterPending[i].written = w
                case .success: failure = failure ?? Errno(rawValue: EIO)
                case .failure(let e) where e == .interrupted || e == .wouldBlock: break  // resumed below
                case .failure(let e): failure = failure ?? e
                }
            })
            if let failure { throw failure }
            first += n
        }
        for p in scatterPending where !p.done {
            try writeAll(fd: fd, UnsafeRawBufferPointer(rebasing: p.bytes[p.written...]), offset: p.offset + UInt64(p.written), slot: slot)
        }
    }

    /// Submits the `n` operations `op(0) ..< op(n)` under one range of `user_data` values, then
    /// reaps all `n`, calling `done(k, result)` as each completes: the window that `readBatch`
    /// and `writeScattered` run (one `io_uring_enter` for the window, not one per operation).
    /// Every one of them has completed when this returns; when waiting fails, the rest are
    /// cancelled first (no operation may still use its buffer) and the error is thrown.
    /// `op` and `done` are not escaping: the `var`s they capture stay on the stack.
    private func runWindow(_ n: Int, _ op: (Int) -> IOOp, _ done: (Int, Result<Int, Errno>) -> Void) throws(Errno) {
        nextOperationID &+= 1
        if nextOperationID >= Ring.internalUserData - UInt64(n) { nextOperationID = 1 }
        let base = nextOperationID
        nextOperationID += UInt64(n - 1)
        for k in 0..<n {
            blockingTimeout = nil
            submit(op(k), userData: base + UInt64(k))
        }
        var pending = n
        while pending > 0 {
            let c: Completion
            do { c = try wait() } catch {
                cancelAll()
                throw error
            }
            guard c.userData >= base, c.userData < base + UInt64(n) else { continue }  // a cancelled leftover
            done(Int(c.userData - base), c.result)
            pending -= 1
        }
    }

    /// How many scattered writes one `writeScattered` keeps in flight (within the ring's 64 entries).
    static let scatterDepth = 32

    /// Sends all of `buffer`, resuming short sends (`SocketSend.sendAll` through this ring). One
    /// send is in flight at a time, so sends on one socket cannot reorder.
    /// - Parameter timeout: how long the peer may leave the socket full (nil: no limit).
    package func sendAll(fd: Int32, _ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil) throws(Errno) {
        if let e = SocketSend.sendAll(fd: fd, buffer, timeout: timeout, ring: self).error { throw e }
    }

    /// Receives exactly `buffer.count` bytes, resuming short receives; returns fewer only when
    /// the peer closed the connection (0 means a clean close before any byte).
    package func recvExactly(fd: Int32, into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) throws(Errno) -> Int {
        var done = 0
        while done < buffer.count {
            let n = try perform(.recv(fd: fd, buffer: UnsafeMutableRawBufferPointer(rebasing: buffer[done...])), timeout: timeout)
            if n == 0 { break }
            done += n
        }
        return done
    }
}

extension IOOp {
    var byteCount: Int {
        switch self {
        case .read(_, let b, _, _): b.count
        case .write(_, let b, _, _): b.count
        case .send(_, let b): b.count
        case .recv(_, let b): b.count
        default: 0
        }
    }
}

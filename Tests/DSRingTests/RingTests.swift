import Testing
import Glibc
@testable import DSRing
import DSSupport

func tempFile() -> (Int32, String) {
    var template = Array("/tmp/dsring-XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    return (fd, String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
}

func pattern(_ n: Int, seed: UInt8 = 3) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) } }

/// A fault plan that, seeded, mixes EINTR, EAGAIN and short transfers into every kind of op.
func chaos(seed: UInt64) -> FaultInjector {
    var s = seed | 1
    return { _, count in
        s ^= s << 13; s ^= s >> 7; s ^= s << 17
        switch s % 5 {
        case 0: return .fail(.interrupted)
        case 1: return .fail(.wouldBlock)
        case 2: return count > 1 ? .short(Int(s >> 8) % count + 1) : .none
        default: return .none
        }
    }
}

/// glibc's `memfd_create(2)` (the Glibc module hides it behind _GNU_SOURCE).
@_silgen_name("memfd_create")
private func testMemfdCreate(_ name: UnsafePointer<CChar>, _ flags: UInt32) -> Int32

@Suite struct RingTests {
    static let backends: [IOBackendKind] = [.ioUring, .blocking]

    @Test(arguments: backends, [false, true])
    func fileRoundTripWithRegisteredSlots(backend: IOBackendKind, faults: Bool) throws {
        let ring = try Ring(entries: 8, backend: backend)
        let pool = try BufferPool(slots: 2, payloadCapacity: 1 << 16, headroom: 64)
        #expect(ring.register(pool) == nil)
        if backend == .ioUring { #expect(ring.registeredSlots == 2) }
        if faults { ring.faultInjector = chaos(seed: 42) }
        try Self.fileRoundTrip(ring, pool)
    }

    /// Writes 64 KiB from one slot of `pool` (a fresh two-slot pool of 64 KiB payloads) into a
    /// temporary file through `ring`, reads them back into the other slot, and checks the bytes
    /// and the short read at the end of the file.
    static func fileRoundTrip(_ ring: Ring, _ pool: BufferPool, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (fd, path) = tempFile()
        defer { close(fd); unlink(path) }
        let data = pattern(1 << 16)
        let a = pool.checkout()!, b = pool.checkout()!
        data.withUnsafeBytes { pool.payload(a).copyMemory(from: $0) }
        try ring.writeAll(fd: fd, UnsafeRawBufferPointer(rebasing: pool.payload(a)[0..<data.count]), offset: 4096, slot: a)
        _ = try ring.perform(.fsync(fd: fd))
        let n = try ring.readFully(fd: fd, into: UnsafeMutableRawBufferPointer(rebasing: pool.payload(b)[0..<data.count]), offset: 4096, slot: b)
        #expect(n == data.count, sourceLocation: sourceLocation)
        #expect(Array(UnsafeRawBufferPointer(rebasing: pool.payload(b)[0..<n])) == data, sourceLocation: sourceLocation)
        // end of file: short read, then zero.
        #expect(try ring.readFully(fd: fd, into: pool.payload(b), offset: 4096 + 65536 - 10, slot: b) == 10, sourceLocation: sourceLocation)
        pool.release(a); pool.release(b)
        #expect(pool.freeCount == 2, sourceLocation: sourceLocation)
    }

    /// `readBatch` gathers scattered pieces of a file into one slot, more pieces than one
    /// submission window, through the ring and inline, with EINTR, EAGAIN and short reads
    /// injected: every piece lands where it was asked to, and a piece that meets the end of the
    /// file is reported with the bytes it got.
    @Test(arguments: backends, [false, true])
    func readBatchGathersScatteredPieces(backend: IOBackendKind, faults: Bool) throws {
        for path in [FileIOPath.ring, .inline] { try readBatch(backend: backend, faults: faults, path: path) }
    }

    func readBatch(backend: IOBackendKind, faults: Bool, path: FileIOPath) throws {
        let ring = try Ring(entries: 8, backend: backend)
        let pool = try BufferPool(slots: 1, payloadCapacity: 1 << 20, headroom: 64)
        ring.register(pool)
        let (fd, file) = tempFile()
        defer { close(fd); unlink(file) }
        let data = pattern(1 << 20, seed: 9)
        #expect(data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } == data.count)
        if faults { ring.faultInjector = chaos(seed: 5) }
        let slot = pool.checkout()!
        let buf = pool.payload(slot)
        // 100 pieces (over 12 windows of 8): every other page, of varying lengths.
        let pieces: [(offset: Int, length: Int)] = (0..<100).map { (offset: $0 * 2 * 4096 + $0, length: 4096 - $0 * 7) }
        var at = 0
        let short = try ring.readBatch(fd: fd, count: pieces.count, slot: slot, path: path) { i in
            defer { at += pieces[i].length }
            return (UnsafeMutableRawBufferPointer(rebasing: buf[at..<(at + pieces[i].length)]), UInt64(pieces[i].offset))
        }
        #expect(short == nil)
        at = 0
        for p in pieces {
            #expect(Array(buf[at..<(at + p.length)]) == Array(data[p.offset..<(p.offset + p.length)]))
            at += p.length
        }
        // The second of three pieces starts 100 bytes before the end of the file.
        let offsets = [0, data.count - 100, 8192]
        let tail = try ring.readBatch(fd: fd, count: 3, slot: slot, path: path) { i in
            (UnsafeMutableRawBufferPointer(rebasing: buf[(i * 4096)..<((i + 1) * 4096)]), UInt64(offsets[i]))
        }
        #expect(tail?.index == 1 && tail?.got == 100)
        #expect(Array(buf[4096..<4196]) == Array(data[(data.count - 100)...]))
        if path == .inline && backend == .ioUring { #expect(ring.inlineOperations > 0) }
    }

    /// Files on shmem (a memfd, /dev/shm) are read and written inline; others go through the ring.
    @Test func fileIOPathFollowsTheFileSystem() throws {
        let m = testMemfdCreate("ds-test", 0)
        #expect(m >= 0)
        defer { close(m) }
        #expect(FileIOPath.forFile(m) == .inline)
        let shm = "/dev/shm/dsring-\(getpid())"
        let s = open(shm, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        defer { close(s); unlink(shm) }
        #expect(FileIOPath.forFile(s) == .inline)
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        #expect(FileIOPath.forFile(fds[0]) == .ring)
        let null = open("/dev/null", O_WRONLY)
        defer { close(null) }
        #expect(FileIOPath.forFile(null) == .ring)
    }

    @Test(arguments: backends, [UInt64(0), 7, 99])
    func socketRoundTripUnderFaults(backend: IOBackendKind, seed: UInt64) throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let data = pattern(200_000, seed: UInt8(seed & 0xFF))
        // The peer drains on its own thread so the sender never fills the socket buffer.
        nonisolated(unsafe) var received = [UInt8](repeating: 0, count: data.count)
        nonisolated(unsafe) var got = 0
        let reader = Thread0 {
            let r = try! Ring(entries: 4, backend: backend)
            if seed != 0 { r.faultInjector = chaos(seed: seed &+ 1) }
            got = received.withUnsafeMutableBytes { try! r.recvExactly(fd: fds[1], into: $0) }
        }
        let ring = try Ring(entries: 4, backend: backend)
        if seed != 0 { ring.faultInjector = chaos(seed: seed) }
        try data.withUnsafeBytes { try ring.sendAll(fd: fds[0], $0) }
        reader.join()
        #expect(got == data.count)
        #expect(received == data)
    }

    @Test(arguments: backends)
    func recvTimesOut(backend: IOBackendKind) throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        if backend == .blocking {
            var tv = timeval(tv_sec: 0, tv_usec: 200_000)
            setsockopt(fds[1], SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        let ring = try Ring(entries: 4, backend: backend)
        var buf = [UInt8](repeating: 0, count: 16)
        #expect(throws: Errno.timedOut) {
            _ = try buf.withUnsafeMutableBytes { try ring.recvExactly(fd: fds[1], into: $0, timeout: .milliseconds(200)) }
        }
    }

    @Test(arguments: backends)
    func injectedResetSurfacesAsError(backend: IOBackendKind) throws {
        let ring = try Ring(entries: 4, backend: backend)
        ring.faultInjector = { kind, _ in kind == .send ? .fail(.connectionReset) : .none }
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        #expect(throws: Errno.connectionReset) { try [UInt8](repeating: 1, count: 10).withUnsafeBytes { try ring.sendAll(fd: fds[0], $0) } }
    }

    @Test func peerCloseIsShortReceive() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[1]) }
        _ = [UInt8](repeating: 7, count: 5).withUnsafeBytes { write(fds[0], $0.baseAddress, 5) }
        close(fds[0])
        let ring = try Ring(entries: 4)
        var buf = [UInt8](repeating: 0, count: 16)
        #expect(try buf.withUnsafeMutableBytes { try ring.recvExactly(fd: fds[1], into: $0) } == 5)
    }

    @Test func slotReleasedTwiceTraps() async {
        await #expect(processExitsWith: .failure) {
            let pool = try! BufferPool(slots: 1, payloadCapacity: 4096, headroom: 0)
            let s = pool.checkout()!
            pool.release(s)
            pool.release(s)
        }
    }

    @Test func poolIsBounded() throws {
        let pool = try BufferPool(slots: 3, payloadCapacity: 100, headroom: 40)
        #expect(pool.slotSize == 4096)
        let taken = (0..<3).compactMap { _ in pool.checkout() }
        #expect(taken.count == 3 && Set(taken).count == 3)
        #expect(pool.checkout() == nil)
    }

    /// A pool the allocator refuses is an error, not a trap: 1 PiB (posix_memalign says ENOMEM),
    /// or a size that overflows.
    @Test func poolAllocationFailureThrows() {
        #expect(throws: Errno.noMemory) { try BufferPool(slots: 1 << 20, payloadCapacity: 1 << 30, headroom: 64) }
        #expect(throws: Errno.noMemory) { try BufferPool(slots: Int.max / 2, payloadCapacity: 1 << 20, headroom: 0) }
        #expect(throws: Errno.noMemory) { try BufferPool(slots: 1, payloadCapacity: Int.max - 100, headroom: 64) }
        // And through the injection tests use to fail a session's pools.
        #expect(throws: Errno.noMemory) {
            try ResourceFaults(.memory).run { () throws(Errno) in _ = try BufferPool(slots: 1, payloadCapacity: 4096, headroom: 0) }
        }
    }

    @Test func probeFindsIoUringHere() {
        // This machine's kernel has io_uring enabled (DESIGN.md); the fallback is tested above by
        // running every round trip with `.blocking`, and end to end via DEVSTREAM_IO_BACKEND.
        #expect(IOBackend.probe() == nil)
        #expect(IOBackend.probeFailure == nil && IOBackend.probed == .ioUring)
    }

    /// A forced backend wins without probing; the probe's fallback speaks only through `warn`.
    @Test func resolveUsesTheSessionsChoice() {
        var warnings: [String] = []
        #expect(IOBackend.resolve(.blocking, warn: { warnings.append($0) }) == .blocking)
        #expect(IOBackend.resolve(.ioUring, warn: { warnings.append($0) }) == .ioUring)
        #expect(IOBackend.resolve(nil, warn: { warnings.append($0) }) == IOBackend.probed)
        #expect(warnings.count == (IOBackend.probeFailure == nil ? 0 : 1))
        #expect(IOBackend.fallbackWarning(.notPermitted).contains("seccomp"))
    }
}

/// A joinable pthread for tests (rings belong to one thread).
final class Thread0: @unchecked Sendable {
    private var tid = pthread_t()
    private let body: () -> Void
    init(_ body: @escaping () -> Void) {
        self.body = body
        let ctx = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&tid, nil, { p in
            let me = Unmanaged<Thread0>.fromOpaque(p!).takeRetainedValue()
            me.body()
            return nil
        }, ctx)
    }
    func join() { pthread_join(tid, nil) }
}

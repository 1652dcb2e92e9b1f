import Foundation
import Testing
import Glibc
@testable import DSRing
import DSSupport

@Suite struct ScatteredWriteTests {
    /// Scattered 4 KiB pieces (and a few odd-sized ones) land at their offsets on both backends,
    /// with EINTR, EAGAIN and short writes injected into every write.
    @Test(arguments: RingTests.backends) func piecesLandAtTheirOffsets(_ backend: IOBackendKind) throws {
        let (fd, path) = tempFile()
        defer { close(fd); unlink(path) }
        let size = 4 << 20
        #expect(ftruncate(fd, off_t(size)) == 0)
        let ring = try Ring(backend: backend)
        ring.faultInjector = chaos(seed: 77)
        let source = pattern(300 * 4096, seed: 9)
        var rng: UInt64 = 0x9E37
        var pieces: [(Int, UInt64, Int)] = []  // (source start, device offset, length)
        var at = 0
        for i in 0 ..< 300 {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            let len = i % 50 == 7 ? 1000 + Int(rng >> 60) : 4096
            let page = UInt64(i * 3 + Int(rng >> 62)) * 4096  // ascending, scattered
            pieces.append((at, page, len))
            at += len
        }
        try source.withUnsafeBytes { src in
            try ring.writeScattered(fd: fd, slot: nil) { add in
                for (s, off, len) in pieces { add(UnsafeRawBufferPointer(rebasing: src[s ..< s + len]), off) }
            }
        }
        var back = [UInt8](repeating: 0, count: size)
        #expect(back.withUnsafeMutableBytes { pread(fd, $0.baseAddress, size, 0) } == size)
        var expected = [UInt8](repeating: 0, count: size)
        for (s, off, len) in pieces { expected[Int(off) ..< Int(off) + len] = source[s ..< s + len] }
        #expect(back == expected)
    }

    /// A failing write fails the batch with its error, after every write was reaped (the ring
    /// is usable at once).
    @Test(arguments: RingTests.backends) func aFailureIsReported(_ backend: IOBackendKind) throws {
        let (fd, path) = tempFile()
        defer { close(fd); unlink(path) }
        let ring = try Ring(backend: backend)
        var n = 0
        ring.faultInjector = { _, _ in n += 1; return n == 40 ? .fail(Errno(rawValue: ENOSPC)) : .none }
        let page = [UInt8](repeating: 7, count: 4096)
        #expect(throws: Errno(rawValue: ENOSPC)) {
            try page.withUnsafeBytes { p in
                try ring.writeScattered(fd: fd, slot: nil) { add in for i in 0 ..< 100 { add(p, UInt64(i) * 8192) } }
            }
        }
        ring.faultInjector = nil
        try page.withUnsafeBytes { p in try ring.writeAll(fd: fd, p, offset: 0) }
    }

    /// Release-mode cost of 4 KiB scattered writes into a memfd-like tmpfs file, one by one
    /// against batched (run with DS_BENCH=1 swift test -c release -Xswiftc -enable-testing).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["DS_BENCH"] != nil)) func scatteredWriteCost() throws {
        let path = "/dev/shm/ds-scatter-bench"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        defer { close(fd); unlink(path) }
        let size = 256 << 20
        #expect(ftruncate(fd, off_t(size)) == 0)
        let ring = try Ring()
        let page = [UInt8](repeating: 5, count: 4096)
        let count = 65536
        func cpu() -> Double {
            var u = rusage(); getrusage(RUSAGE_SELF.rawValue, &u)
            return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
        }
        for round in 0 ..< 3 {
            let c0 = cpu(), t0 = Monotonic.now
            try page.withUnsafeBytes { p in for i in 0 ..< count { try ring.writeAll(fd: fd, p, offset: UInt64(i) * 4096 * 2 % UInt64(size)) } }
            let c1 = cpu(), t1 = Monotonic.now
            try page.withUnsafeBytes { p in
                try ring.writeScattered(fd: fd, slot: nil) { add in for i in 0 ..< count { add(p, UInt64(i) * 4096 * 2 % UInt64(size)) } }
            }
            let c2 = cpu(), t2 = Monotonic.now
            // Reads one by one, as the source gathers a pages frame today.
            var buffer = [UInt8](repeating: 0, count: 4096)
            try buffer.withUnsafeMutableBytes { b in
                for i in 0 ..< count { _ = try ring.readFully(fd: fd, into: b, offset: UInt64(i) * 4096 * 2 % UInt64(size)) }
            }
            let c3 = cpu(), t3 = Monotonic.now
            print(String(format: "round %d: writes one by one %.2f µs wall %.2f µs CPU per page; scattered %.2f µs wall %.2f µs CPU per page; reads one by one %.2f µs wall %.2f µs CPU per page", round,
                         (t1 - t0).seconds * 1e6 / Double(count), (c1 - c0) * 1e6 / Double(count),
                         (t2 - t1).seconds * 1e6 / Double(count), (c2 - c1) * 1e6 / Double(count),
                         (t3 - t2).seconds * 1e6 / Double(count), (c3 - c2) * 1e6 / Double(count)))
        }
    }
}

import Testing
import Glibc
import DSSupport

@Suite("Support")
struct SupportTests {
    /// `send -` grows its input pipe to a chunk, but never past pipe-max-size, even with
    /// CAP_SYS_RESOURCE (which lets a process pin more unswappable pipe memory): a 64 MiB chunk
    /// gets a capped pipe. Without that capability (this container's root lacks it) the kernel
    /// refuses the large size and the halving reaches the cap anyway, so here this checks the
    /// outcome, not which of the two produced it.
    @Test func growPipeStaysWithinPipeMaxSize() throws {
        var p: [Int32] = [0, 0]
        #expect(pipe(&p) == 0)
        defer { close(p[0]); close(p[1]) }
        FileSystem.growPipe(p[1], toHold: 64 << 20)
        let got = fcntl(p[1], 1032)  // F_GETPIPE_SZ
        let max = try #require(FileSystem.pipeMaxSize())
        #expect(got >= 64 << 10 && got <= max, "pipe of \(got) bytes, pipe-max-size \(max)")
        FileSystem.growPipe(p[0], toHold: 512 << 10)  // within the cap: grown as asked (already larger here)
        #expect(fcntl(p[0], 1032) >= 512 << 10)
    }

    /// An embedder that never calls `SignalCleanup.arm()` (only the CLI does) keeps its own
    /// signal handling, and the library records nothing for it.
    @Test func signalCleanupRecordsNothingUnlessArmed() {
        let id = SignalCleanup.register("/nonexistent/devstream-test.partial")
        #expect(id == 0)
        #expect(!SignalCleanup.registered.contains("/nonexistent/devstream-test.partial"))
        SignalCleanup.unregister(id)
    }

    @Test func errnoTextNamesTheCode() {
        #expect(Errno(rawValue: ENOENT).description == "No such file or directory (ENOENT)")
        #expect(Errno(rawValue: ECONNREFUSED).description.hasSuffix("(ECONNREFUSED)"))
        #expect(Errno(rawValue: 133).description.hasSuffix("(errno 133)"))
    }

    @Test func hexDigestIsSixteenDigits() {
        #expect(Hex.digest(0) == "0000000000000000")
        #expect(Hex.digest(0xabc) == "0000000000000abc")
        #expect(Hex.digest(.max) == "ffffffffffffffff")
        #expect(Hex.code(UInt8(0x1b)) == "0x1b")
    }

    @Test func littleEndianRoundTrip() {
        var a: [UInt8] = []
        a.appendLE(UInt32(0x0102_0304))
        a.appendLE(UInt64(0x1122_3344_5566_7788))
        #expect(a.prefix(4) == [4, 3, 2, 1])
        #expect(a.loadLE(at: 0, as: UInt32.self) == 0x0102_0304)
        #expect(a.loadLE(at: 4, as: UInt64.self) == 0x1122_3344_5566_7788)
        var b = [UInt8](repeating: 0, count: 8)
        b.withUnsafeMutableBytes { $0.storeLE(UInt16(0xbeef), at: 3) }
        #expect(b[3] == 0xef && b[4] == 0xbe)
    }

    @Test func sleepWaitsAtLeastTheDuration() {
        let t0 = Monotonic.now
        sleep(for: .milliseconds(5))
        #expect(Monotonic.now - t0 >= .milliseconds(5))
        sleep(for: .zero)  // returns at once
    }

    @Test func conditionLockTimesOutWithFalse() {
        let lock = ConditionLock()
        let ok = lock.withLock { lock.wait(until: { false }, timeout: .milliseconds(1)) }
        #expect(!ok)
    }

    @Test func tryLockSkipsWhenHeld() {
        let lock = ConditionLock()
        #expect(lock.withLockIfAvailable { 7 } == 7)
        let inner = lock.withLock { lock.withLockIfAvailable { 1 } }
        #expect(inner == nil)
    }

    @Test func threadRunsAndJoins() throws {
        let lock = ConditionLock()
        nonisolated(unsafe) var ran = false
        let t = try OSThread(name: "ds-test") { lock.withLock { ran = true } }
        t.join()
        #expect(lock.withLock { ran })
    }

    /// The kernel shows the thread's name (cut to 15 bytes), as `top -H` would.
    @Test func threadIsNamed() throws {
        nonisolated(unsafe) var seen = ""
        let t = try OSThread(name: "ds-a-very-long-thread-name") {
            seen = String(decoding: readComm(), as: UTF8.self)
        }
        t.join()
        #expect(t.name == "ds-a-very-long-")
        #expect(seen == "ds-a-very-long-")
    }

    /// A failed pthread_create is an error the caller gets, never a trap; injected failures
    /// reach the threads a thread starts, and only those.
    @Test func threadCreationFailureThrows() throws {
        let faults = ResourceFaults(.thread, after: 1)
        nonisolated(unsafe) var inner: Errno?
        nonisolated(unsafe) var ranSecond = false
        let outer = try faults.run { () throws(Errno) -> OSThread in
            // The first start succeeds; a thread it starts in turn is the second and fails.
            try OSThread(name: "ds-test-outer") {
                do throws(Errno) { _ = try OSThread(name: "ds-test-inner") { ranSecond = true } } catch { inner = error }
            }
        }
        outer.join()
        #expect(inner == .wouldBlock)
        #expect(!ranSecond)
        #expect(throws: Errno.wouldBlock) { try faults.run { () throws(Errno) in _ = try OSThread(name: "ds-test") {} } }
        // Outside `run`, and on other threads, nothing is injected.
        let fine = try OSThread(name: "ds-test") {}
        fine.join()
        #expect(ResourceFaults.current == nil)
    }

    @Test func alignedMemoryFailureThrows() throws {
        #expect(throws: Errno.noMemory) { try AlignedMemory.allocate(byteCount: 1 << 60, alignment: 4096) }
        let p = try AlignedMemory.allocate(byteCount: 8192, alignment: 4096)
        #expect(Int(bitPattern: p) % 4096 == 0)
        AlignedMemory.free(p)
    }
}

/// This thread's name, from /proc (what `top -H` shows).
func readComm() -> [UInt8] {
    let fd = open("/proc/thread-self/comm", O_RDONLY)
    guard fd >= 0 else { return [] }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 64)
    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    return n > 0 ? Array(buf[0..<n]).filter { $0 != 10 } : []
}

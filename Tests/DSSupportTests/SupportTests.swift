import Testing
import Glibc
import DSSupport

@Suite("Support")
struct SupportTests {
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

    @Test func threadRunsAndJoins() {
        let lock = ConditionLock()
        nonisolated(unsafe) var ran = false
        let t = OSThread { lock.withLock { ran = true } }
        t.join()
        #expect(lock.withLock { ran })
    }
}

import Testing
import Glibc
@testable import DSRing
import DSSupport

/// Setting up an io_uring fails with ENOMEM when the rings of all of a user's processes outgrow
/// RLIMIT_MEMLOCK (the kernel charges them there for users without CAP_IPC_LOCK). Such a ring
/// runs blocking syscalls and says why; other setup errors are thrown. `ResourceFaults(.ring)`
/// makes the setup fail on this thread only (the tests run as root, whose rings are not
/// charged; `CLITests.memlockLimitFallsBackToUnregisteredBuffers` runs the real limit).
@Suite struct RingSetupTests {
    @Test func outOfMemoryFallsBackToBlockingSyscalls() throws {
        let ring = try ResourceFaults(.ring).run { () throws(Errno) in try Ring(entries: 8, backend: .ioUring) }
        #expect(ring.backend == .blocking)
        let w = try #require(ring.setupWarning)
        #expect(w.contains("ENOMEM") && w.contains("RLIMIT_MEMLOCK") && w.contains("blocking syscalls") && w.contains("ulimit -l"), "\(w)")
        // It works: a registered pool is not registered (nothing to pin), and a round trip
        // through a file gets its bytes back.
        let pool = try BufferPool(slots: 2, payloadCapacity: 1 << 16, headroom: 64)
        #expect(ring.register(pool) == nil && ring.registeredSlots == 0)
        try RingTests.fileRoundTrip(ring, pool)
    }

    @Test func otherSetupErrorsAreThrown() {
        #expect(throws: Errno.notPermitted) {
            try ResourceFaults(.ring, error: .notPermitted).run { () throws(Errno) in _ = try Ring(entries: 8, backend: .ioUring) }
        }
    }

    @Test func aRingThatSetsUpHasNoWarning() throws {
        let ring = try Ring(entries: 8, backend: .ioUring)
        #expect(ring.backend == .ioUring && ring.setupWarning == nil)
        // A blocking ring asked for as such has nothing to warn about either.
        #expect(try Ring(entries: 8, backend: .blocking).setupWarning == nil)
    }
}

import Testing
import Glibc
import Synchronization
@testable import DeviceStream
import DSSupport
import DSWire
import DSCodec
import DSRing
import DSTransport
import DSDevices
import DSScheduler

/// The destination's round barrier: no channel reads round k+1 before every channel has loaded
/// round k (else a page's older copy, late on one channel, could land over its newer copy).
@Suite struct RoundBarrierTests {
    @Test func holdsAChannelUntilEveryChannelReachedTheMark() throws {
        let barrier = RoundBarrier(channels: 2)
        let abort = AbortSignal()
        let passed = Atomic<Bool>(false)
        let a = try OSThread(name: "ds-test") {
            try? barrier.arrive(round: 1, abort: abort, timeout: .seconds(30))
            passed.store(true, ordering: .sequentiallyConsistent)
        }
        usleep(100_000)
        #expect(passed.load(ordering: .sequentiallyConsistent) == false)  // channel 1 has not arrived
        try barrier.arrive(round: 1, abort: abort, timeout: .seconds(30))
        a.join()
        #expect(passed.load(ordering: .sequentiallyConsistent) == true)
        // The next round starts afresh.
        let b = try OSThread(name: "ds-test") { try? barrier.arrive(round: 2, abort: abort, timeout: .seconds(30)) }
        try barrier.arrive(round: 2, abort: abort, timeout: .seconds(30))
        b.join()
    }

    @Test func abortReleasesWaitersWithTheError() throws {
        let barrier = RoundBarrier(channels: 3)
        let abort = AbortSignal()
        abort.onAbort { barrier.wake() }
        let failed = Mutex<TransferError?>(nil)
        let t = try OSThread(name: "ds-test") {
            do throws(TransferError) { try barrier.arrive(round: 1, abort: abort, timeout: .seconds(30)) } catch { failed.withLock { $0 = error } }
        }
        usleep(50_000)
        abort.abort(TransferError(.peerClosed, "channel 2 went away"))
        t.join()
        #expect(failed.withLock { $0?.message } == "channel 2 went away")
    }

    @Test func marksOutOfStepAreAProtocolViolation() {
        let barrier = RoundBarrier(channels: 1)
        let abort = AbortSignal()
        #expect(throws: TransferError.self) {
            for r: UInt32 in [10, 1, 2, 3, 4, 5] { try barrier.arrive(round: r, abort: abort, timeout: .seconds(30)) }
        }
    }

    @Test func aRoundNeverMarkedOnEveryChannelTimesOutInsteadOfHanging() {
        // A hostile source marks round 1 on one channel of two and never on the other.
        let barrier = RoundBarrier(channels: 2)
        let abort = AbortSignal()
        let t0 = Monotonic.now
        var caught: TransferError?
        do throws(TransferError) { try barrier.arrive(round: 1, abort: abort, timeout: .milliseconds(300)) } catch { caught = error }
        #expect(caught?.code == .protocolViolation)
        #expect(caught?.message.contains("out of step") == true)
        #expect(Monotonic.now - t0 < .seconds(20))
    }
}

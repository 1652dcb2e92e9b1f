import Testing
import Glibc
import Synchronization
@testable import DeviceStream

/// The destination's round barrier: no channel reads round k+1 before every channel has loaded
/// round k (else a page's older copy, late on one channel, could land over its newer copy).
@Suite struct RoundBarrierTests {
    @Test func holdsAChannelUntilEveryChannelReachedTheMark() throws {
        let barrier = RoundBarrier(channels: 2)
        let abort = AbortSignal()
        let passed = Atomic<Bool>(false)
        let a = OSThread {
            try? barrier.arrive(round: 1, abort: abort)
            passed.store(true, ordering: .sequentiallyConsistent)
        }
        usleep(100_000)
        #expect(passed.load(ordering: .sequentiallyConsistent) == false)  // channel 1 has not arrived
        try barrier.arrive(round: 1, abort: abort)
        a.join()
        #expect(passed.load(ordering: .sequentiallyConsistent) == true)
        // The next round starts afresh.
        let b = OSThread { try? barrier.arrive(round: 2, abort: abort) }
        try barrier.arrive(round: 2, abort: abort)
        b.join()
    }

    @Test func abortReleasesWaitersWithTheError() {
        let barrier = RoundBarrier(channels: 3)
        let abort = AbortSignal()
        abort.onAbort { barrier.wake() }
        let failed = Mutex<TransferError?>(nil)
        let t = OSThread {
            do throws(TransferError) { try barrier.arrive(round: 1, abort: abort) } catch { failed.withLock { $0 = error } }
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
            for r: UInt32 in [10, 1, 2, 3, 4, 5] { try barrier.arrive(round: r, abort: abort) }
        }
    }
}

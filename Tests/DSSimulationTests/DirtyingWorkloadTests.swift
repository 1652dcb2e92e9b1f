import Testing
@testable import DSSimulation
import DSDevices
import DSTestSupport

@Suite struct DirtyingWorkloadTests {
    /// Paused, the workload writes nothing; resumed, it writes and marks pages; stopped, its
    /// thread is joined and the workload freed (the thread's closure held it).
    @Test func pauseResumeAndStop() throws {
        let pages = WorkloadMemory(size: 1 << 20)
        let size = pages.size, memory = pages.base, bitmap = pages.bitmap
        weak var gone: DirtyingWorkload?
        do {
            let workload = try DirtyingWorkload(base: memory, size: UInt64(size), rate: 64 << 20, hotFraction: 0.5, seed: 3,
                                            bitmap: bitmap, chunkShift: 12)
            gone = workload
            sleepMs(20)
            #expect(workload.pagesWritten.load(ordering: .relaxed) == 0, "a new workload waits for resume()")
            workload.resume()
            for _ in 0 ..< 200 where bitmap.popcount == 0 { sleepMs(10) }
            #expect(bitmap.popcount > 0)
            workload.pause()
            let written = workload.pagesWritten.load(ordering: .relaxed)
            let digest = xxh3(memory, size)
            sleepMs(30)
            #expect(workload.pagesWritten.load(ordering: .relaxed) == written)
            #expect(xxh3(memory, size) == digest, "no write after pause() returned")
            workload.resume()
            for _ in 0 ..< 200 where workload.pagesWritten.load(ordering: .relaxed) == written { sleepMs(10) }
            #expect(workload.pagesWritten.load(ordering: .relaxed) > written)
            workload.stop()
        }
        #expect(gone == nil, "the stopped workload was not freed")
    }
}

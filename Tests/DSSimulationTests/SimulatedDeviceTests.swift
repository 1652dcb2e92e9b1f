import Foundation
import Testing
@testable import DSSimulation
import DSDevices
import DSTestSupport

@Suite struct SimulatedDeviceTests {
    @Test func roundTripWhileWorkloadRuns() throws {
        let size: UInt64 = 16 << 20
        let src = try SimulatedDevice(size: size, dirtyRate: 32 << 20, hotFraction: 0.1, profile: .mixed, seed: 5, chunkSize: 256 << 10)
        let dst = try SimulatedDevice(destinationSize: size, chunkSize: 256 << 10)
        defer { src.close(); dst.close() }
        #expect(src.state == .running)
        #expect(dst.state == .resuming)
        try src.setState(.preCopy)
        #expect(try src.precopyInfo() == PrecopyInfo(initialBytes: size, dirtyBytes: 0))
        var resent = 0
        for round in 0 ..< 4 {
            var chunks: [UInt64] = []
            try src.takeDirtyChunks(into: &chunks)
            // Later rounds wait (up to 2 s, for a loaded machine) until the workload dirtied something.
            for _ in 0 ..< 200 where round > 0 && chunks.isEmpty {
                sleepMs(10)
                try src.takeDirtyChunks(into: &chunks)
            }
            if round == 0 { #expect(chunks == Array(0 ..< 64)) } else { resent += chunks.count }
            _ = try copyChunks(chunks, from: src, to: dst)
            #expect(try src.precopyInfo().initialBytes == 0)
            sleepMs(30)
        }
        #expect(resent > 0, "the workload dirtied nothing during pre-copy")
        try src.setState(.stopCopy)
        var rest: [UInt64] = []
        try src.takeDirtyChunks(into: &rest)
        _ = try copyChunks(rest, from: src, to: dst)
        var none: [UInt64] = []
        try src.takeDirtyChunks(into: &none)
        #expect(none.isEmpty)
        #expect(src.dirtyByteCount() == 0)
        let config = try src.saveConfig()
        #expect(config.count == 64)
        try dst.loadConfig(config)
        let srcDigest = try src.digest()
        try dst.setState(.stop)
        try dst.setState(.running)
        #expect(try dst.digest() == srcDigest)
        #expect(try dst.saveConfig() == config)
        // The workload really changed the image.
        let original = ContentGenerator.bytes(count: Int(size), profile: .mixed, seed: 5, offset: 0)
        #expect(original.withUnsafeBytes { xxh3($0.baseAddress, $0.count) } != srcDigest)
    }

    @Test func chunkWrittenAfterTakeIsReportedAgain() throws {
        let dev = try SimulatedDevice(size: 4 << 20, chunkSize: 64 << 10)
        defer { dev.close() }
        try dev.setState(.preCopy)
        var all: [UInt64] = []
        try dev.takeDirtyChunks(into: &all)
        #expect(all.count == 64)
        var again: [UInt64] = []
        try dev.takeDirtyChunks(into: &again)
        #expect(again.isEmpty)
        #expect(dev.dirtyByteCount() == 0)
        dev.simulateDeviceWrite(at: 3 * 65536 + 100, [1, 2, 3])
        dev.simulateDeviceWrite(at: 10 * 65536 - 1, [9, 9])  // spans chunks 9 and 10
        #expect(dev.dirtyByteCount() == 3 * 65536)
        #expect(try dev.precopyInfo() == PrecopyInfo(initialBytes: 0, dirtyBytes: 3 * 65536))
        try dev.takeDirtyChunks(into: &again)
        #expect(again == [3, 9, 10])
        var last: [UInt64] = []
        try dev.takeDirtyChunks(into: &last)
        #expect(last.isEmpty)
    }

    @Test func workloadWritesAreCaughtByLaterTakes() throws {
        let dev = try SimulatedDevice(size: 8 << 20, dirtyRate: 64 << 20, hotFraction: 0.5, seed: 2, chunkSize: 64 << 10)
        defer { dev.close() }
        try dev.setState(.preCopy)
        var chunks: [UInt64] = []
        try dev.takeDirtyChunks(into: &chunks)
        chunks.removeAll()
        var waited = 0
        while chunks.isEmpty && waited < 2000 {
            sleepMs(10); waited += 10
            try dev.takeDirtyChunks(into: &chunks)
        }
        #expect(!chunks.isEmpty)
        #expect(chunks.allSatisfy { $0 < 128 })
    }

    @Test func workloadStopsOutsideRunningStatesAndRestarts() throws {
        let dev = try SimulatedDevice(size: 8 << 20, dirtyRate: 64 << 20, seed: 3)
        defer { dev.close() }
        let initial = try dev.digest()
        var wrote = false
        for _ in 0 ..< 200 where !wrote { sleepMs(10); wrote = try dev.digest() != initial }
        #expect(wrote, "no writes in RUNNING")
        try dev.setState(.preCopy)
        sleepMs(20)
        try dev.setState(.stopCopy)
        let d1 = try dev.digest()
        sleepMs(60)
        #expect(try dev.digest() == d1)
        try dev.setState(.stop)
        sleepMs(20)
        #expect(try dev.digest() == d1)
        try dev.setState(.running)  // e.g. the migration failed: the source runs again
        var changed = false
        for _ in 0 ..< 100 where !changed { sleepMs(10); changed = try dev.digest() != d1 }
        #expect(changed)
    }

    @Test func stopCopyWithoutPreCopyReportsEverything() throws {
        let dev = try SimulatedDevice(size: 1 << 20, chunkSize: 4096)
        defer { dev.close() }
        #expect(dev.dirtyByteCount() == 1 << 20)
        try dev.setState(.stopCopy)  // RUNNING -> STOP -> STOP_COPY
        #expect(try dev.stopCopySize() == (1 << 20) + 64)
        var chunks: [UInt64] = []
        try dev.takeDirtyChunks(into: &chunks)
        #expect(chunks.count == 256)
        #expect(try dev.stopCopySize() == 64)
    }

    @Test func stateErrors() throws {
        let src = try SimulatedDevice(size: 1 << 20)
        let dst = try SimulatedDevice(destinationSize: 1 << 20)
        defer { src.close(); dst.close() }
        expectError(.invalidState, "cannot read migration data in state RUNNING; allowed in PRE_COPY and STOP_COPY") {
            _ = try src.dataFD(for: .save)
        }
        expectError(.invalidState, "PRE_COPY") { _ = try src.precopyInfo() }
        var chunks: [UInt64] = []
        expectError(.invalidState) { try src.takeDirtyChunks(into: &chunks) }
        try src.setState(.preCopy)
        expectError(.invalidState, "RESUMING only") { _ = try src.dataFD(for: .load) }
        expectError(.invalidState) { try src.loadConfig([UInt8](repeating: 0, count: 64)) }
        expectError(.invalidState, "state RESUMING") { _ = try dst.dataFD(for: .save) }
        expectError(.blockedTransition, "from RESUMING to ERROR") { try dst.setState(.error) }
        #expect(dst.state == .resuming)
        expectError(.malformedStream) { try dst.loadConfig([1, 2, 3]) }
        let other = try SimulatedDevice(size: 2 << 20)
        defer { other.close() }
        expectError(.malformedStream, "2097152 bytes") { try dst.loadConfig(try other.saveConfig()) }
        dst.close()
        expectError(.invalidState, "closed") { _ = try dst.digest() }
    }
}

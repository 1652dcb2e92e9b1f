import Foundation
import Testing
@testable import DSSimulation
import DSDevices
import DSTestSupport

@Suite struct EmulatedVFIODeviceTests {
    /// The whole stream of a `size`-byte source with no workload (RUNNING -> STOP_COPY directly).
    static func quietStream(size: UInt64, seed: UInt64 = 1) throws -> ([UInt8], UInt64) {
        let src = try EmulatedVFIODevice(size: size, seed: seed)
        defer { src.close() }
        try src.setState(.stopCopy)
        let stream = try drain(src, bufferSize: 100_000)
        return (stream, try src.digest())
    }

    /// Writes `bytes` and leaves RESUMING; returns the error, if any.
    static func load(_ bytes: [UInt8], size: UInt64, split: Int = 1 << 20) -> DeviceError? {
        do {
            let dst = try EmulatedVFIODevice(destinationSize: size)
            defer { dst.close() }
            var pos = 0
            while pos < bytes.count {
                let n = min(split, bytes.count - pos)
                try bytes.withUnsafeBytes { (raw) in
                    try dst.write(UnsafeRawBufferPointer(rebasing: raw[pos ..< pos + n]))
                }
                pos += n
            }
            do {
                try dst.setState(.stop)
            } catch {
                #expect(dst.state == .error)
                throw error
            }
            return nil
        } catch {
            return error as? DeviceError
        }
    }

    @Test func roundTripWhileWorkloadRuns() throws {
        let size: UInt64 = 4 << 20
        let src = try EmulatedVFIODevice(size: size, dirtyRate: 16 << 20, seed: 9)
        let dst = try EmulatedVFIODevice(destinationSize: size)
        defer { src.close(); dst.close() }
        try src.setState(.preCopy)
        let info = try src.precopyInfo()
        #expect(info.initialBytes == 33 + size + 64 * 13)
        var stream = try drain(src, bufferSize: 7001)
        #expect(stream.count >= Int(33 + size + 64 * 13))
        #expect(try src.precopyInfo().initialBytes == 0)
        // New records appear as the workload dirties pages.
        var more: [UInt8] = []
        for _ in 0 ..< 200 where more.isEmpty {
            sleepMs(10)
            more = try drain(src, bufferSize: 4096)
        }
        #expect(!more.isEmpty, "no dirty records appeared during pre-copy")
        stream += more
        sleepMs(20)
        stream += try drain(src, bufferSize: 65536 + 13)
        try src.setState(.stopCopy)
        stream += try drain(src, bufferSize: 1000)
        #expect(try drain(src, bufferSize: 1000).isEmpty)
        let srcDigest = try src.digest()
        // Write in random splits, including partial record headers.
        var rng = TestRNG(4)
        var pos = 0
        while pos < stream.count {
            let n = min(stream.count - pos, 1 + rng.below(90_000))
            try stream.withUnsafeBytes { (raw) in try dst.write(UnsafeRawBufferPointer(rebasing: raw[pos ..< pos + n])) }
            pos += n
        }
        try dst.loadConfig(try src.saveConfig())
        try dst.setState(.stop)
        try dst.setState(.running)
        #expect(try dst.digest() == srcDigest)
        #expect(srcDigest != (try EmulatedVFIODevice(size: size, seed: 9).digest()), "the workload changed nothing")
    }

    @Test func byteAtATimeWritesWork() throws {
        let size: UInt64 = 256 << 10
        let (stream, digest) = try Self.quietStream(size: size)
        #expect(stream.count == 33 + Int(size) + 4 * 13 + 37)
        let dst = try EmulatedVFIODevice(destinationSize: size)
        defer { dst.close() }
        for i in 0 ..< stream.count {
            try stream.withUnsafeBytes { (raw) in try dst.write(UnsafeRawBufferPointer(rebasing: raw[i ..< i + 1])) }
        }
        try dst.setState(.stop)
        #expect(try dst.digest() == digest)
        #expect(Self.load(stream, size: size, split: 13) == nil)
    }

    @Test func truncatedStreamFailsWhenLeavingResuming() throws {
        let size: UInt64 = 256 << 10
        let (stream, _) = try Self.quietStream(size: size)
        for drop in [1, 13, 24, 37, 38, 5000, stream.count - 10] {
            let err = Self.load(Array(stream.dropLast(drop)), size: size)
            #expect(err?.code == .malformedStream, "drop \(drop)")
            #expect(err?.message.contains("stream truncated: no trailer") == true, "drop \(drop): \(err?.message ?? "")")
        }
        // After the failure the destination is in ERROR and cannot leave it.
        let dst = try EmulatedVFIODevice(destinationSize: size)
        defer { dst.close() }
        try Array(stream.dropLast(1)).withUnsafeBytes { (raw) in try dst.write(raw) }
        expectError(.malformedStream, "no trailer") { try dst.setState(.running) }
        #expect(dst.state == .error)
        expectError(.blockedTransition) { try dst.setState(.stop) }
    }

    @Test(arguments: [0, 5, 15, 27, 33, 38, 43, 46, 1000, 60_000, -30, -14, -1])
    func flippedByteFails(position: Int) throws {
        let size: UInt64 = 256 << 10
        let (stream, _) = try Self.quietStream(size: size)
        var bad = stream
        let at = position >= 0 ? position : stream.count + position
        bad[at] ^= 0x20
        let err = Self.load(bad, size: size)
        #expect(err?.code == .malformedStream, "flip at \(at): \(err?.message ?? "no error")")
    }

    @Test func garbageFailsWithoutCrashing() throws {
        let size: UInt64 = 64 << 10
        let (stream, _) = try Self.quietStream(size: size)
        var rng = TestRNG(17)
        for trial in 0 ..< 40 {
            var junk = (0 ..< 20_000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if trial % 2 == 1 { junk = Array(stream[0 ..< 33]) + junk }  // a valid header, then garbage
            if trial % 4 == 3 { junk = Array(stream[0 ..< 46]) + junk }  // a valid record start, then garbage
            let err = Self.load(junk, size: size, split: 1 + rng.below(5000))
            #expect(err?.code == .malformedStream, "trial \(trial)")
        }
        expectError(.malformedStream, "after the trailer") {
            let dst = try EmulatedVFIODevice(destinationSize: size)
            try (stream + [0x44]).withUnsafeBytes { (raw) in try dst.write(raw) }
        }
        // A stream for another size is refused at its header.
        let err = Self.load(stream, size: 128 << 10)
        #expect(err?.message.contains("65536 bytes") == true, "\(err?.message ?? "")")
    }

    @Test func stateErrors() throws {
        let src = try EmulatedVFIODevice(size: 64 << 10)
        let dst = try EmulatedVFIODevice(destinationSize: 64 << 10)
        defer { src.close(); dst.close() }
        var buf = [UInt8](repeating: 0, count: 100)
        expectError(.invalidState, "state RUNNING") {
            _ = try buf.withUnsafeMutableBytes { (b) -> Int in try src.read(into: b) }
        }
        expectError(.invalidState, "state RESUMING") {
            _ = try buf.withUnsafeMutableBytes { (b) -> Int in try dst.read(into: b) }
        }
        try src.setState(.preCopy)
        expectError(.invalidState, "cannot write migration data in state PRE_COPY; allowed in RESUMING only") {
            try buf.withUnsafeBytes { (b) in try src.write(b) }
        }
        expectError(.blockedTransition) { try dst.setState(.error) }
        #expect(src.state == .preCopy)
        // STOP_COPY size estimate counts what is left.
        #expect(try src.stopCopySize() == 33 + (64 << 10) + 13 + 37)
        try src.setState(.stopCopy)
        expectError(.blockedTransition, "from STOP_COPY to PRE_COPY") { try src.setState(.preCopy) }
        #expect(src.state == .stopCopy)
    }
}

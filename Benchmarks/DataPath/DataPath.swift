// Hot-path allocation guards: per-chunk encode, decode and framing must not allocate.
// `mallocCountTotal` thresholds fail the run if a change adds an allocation per chunk.
import Benchmark
import DSCodec
import DSWire
import DSSimulation

/// A 1 MiB chunk of device-memory-like content.
nonisolated(unsafe) let raw: UnsafeMutableRawBufferPointer = {
    let b = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    ContentGenerator.fill(b, profile: .mixed, seed: 1, offset: 0)
    return b
}()
nonisolated(unsafe) let wire = UnsafeMutableRawBufferPointer.allocate(byteCount: WireLimits.compressBound(1 << 20), alignment: 4096)
nonisolated(unsafe) let decoded = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
nonisolated(unsafe) let header = UnsafeMutableRawBufferPointer.allocate(byteCount: FrameHeader.size, alignment: 8)
nonisolated(unsafe) let encoder = try! ChunkEncoder(compression: true, acceleration: 1)  // a benchmark: no LZ4 state, no run

nonisolated(unsafe) let zeroAllocations: [BenchmarkMetric: BenchmarkThresholds] = [
    .mallocCountTotal: .init(absolute: [.p100: 0]),
]

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal],
                                           maxDuration: .seconds(2), maxIterations: 2000)

    Benchmark("encode 1 MiB mixed chunk (XXH3 + LZ4)",
              configuration: .init(scalingFactor: .one, thresholds: zeroAllocations)) { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(encoder.encode(UnsafeRawBufferPointer(raw), into: wire))
        }
    }

    let enc = encoder.encode(UnsafeRawBufferPointer(raw), into: wire)
    Benchmark("decode 1 MiB chunk (LZ4_decompress_safe + XXH3 verify)",
              configuration: .init(scalingFactor: .one, thresholds: zeroAllocations)) { benchmark in
        for _ in benchmark.scaledIterations {
            try ChunkDecoder.decompress(UnsafeRawBufferPointer(rebasing: wire[0..<enc.wireLength]), rawLength: 1 << 20,
                                        checksum: enc.checksum, into: decoded)
        }
    }

    Benchmark("frame header encode + decode + bounds check",
              configuration: .init(scalingFactor: .kilo, thresholds: zeroAllocations)) { benchmark in
        for i in benchmark.scaledIterations {
            let h = FrameHeader(type: .data, flags: [.lz4], stream: 0, rawLength: 1 << 20, wireLength: UInt32(enc.wireLength),
                                aux: 1, position: UInt64(i) << 20, checksum: enc.checksum)
            h.encode(into: header)
            let back = try FrameHeader.decode(UnsafeRawBufferPointer(header))
            try back.checkLengths(maxChunk: 1 << 20)
            blackHole(back)
        }
    }
}

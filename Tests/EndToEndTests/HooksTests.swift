import Testing
import Glibc
@testable import DeviceStream
import DSSimulation
import DSSupport
import DSWire
import DSCodec
import DSRing
import DSTransport
import DSDevices
import DSScheduler

/// Every device through its save and load hooks, in process, with no network: the source's
/// rounds are planned and read exactly as channels do, and loaded as the destination does.
@Suite struct HooksRoundTripTests {
    /// Drives save hooks into load hooks. Returns (rounds, bytes moved).
    func migrate(_ src: any MigratableDevice, _ dst: any MigratableDevice, rounds: Int, pause: useconds_t = 0) throws -> (Int, UInt64) {
        let saver = DeviceSaver(id: 0, device: src)
        try saver.saveSetup()
        let loader = try DeviceLoader(id: 0, device: dst, header: saver.header, channels: 1)
        let ring = try Ring(entries: 8)
        let abort = AbortSignal()
        var buf = [UInt8](repeating: 0, count: 256 << 10)
        var moved: UInt64 = 0
        func round() throws {
            var items: [SaveItem] = []
            try saver.plan(chunkSize: buf.count, into: &items)
            try saver.beginRound()
            for item in items {
                switch item {
                case .range(_, let offset, let length):
                    try buf.withUnsafeMutableBytes { b in
                        try saver.read(offset: offset, length: length, into: b, ring: ring, slot: nil)
                        try loader.load(UnsafeRawBufferPointer(rebasing: b[0..<length]), at: offset, channel: 0, ring: ring, slot: 0)
                    }
                    moved += UInt64(length)
                case .drain:
                    while let (seq, n) = try buf.withUnsafeMutableBytes({ try saver.readStream(into: $0) }) {
                        try buf.withUnsafeBytes { try loader.loadStream(UnsafeRawBufferPointer(rebasing: $0[0..<n]), seq: seq, channel: 0, timeout: .seconds(5), abort: abort) }
                        moved += UInt64(n)
                    }
                }
            }
        }
        if saver.supportsPrecopy {
            for _ in 0..<rounds { try round(); if pause > 0 { usleep(pause) } }
        }
        _ = try saver.enterStopCopy()
        try round()
        try dst.loadConfig(try src.saveConfig())
        try loader.resume()
        #expect(dst.state == .running)
        try saver.cleanup(success: true)
        #expect(src.state == .stop)
        return (rounds, moved)
    }

    @Test func simulatedDevice() throws {
        let src = try SimulatedDevice(size: 16 << 20, dirtyRate: 32 << 20, hotFraction: 0.1, profile: .mixed, seed: 7)
        let dst = try SimulatedDevice(destinationSize: 16 << 20)
        defer { src.close(); dst.close() }
        let (_, moved) = try migrate(src, dst, rounds: 4, pause: 20_000)
        #expect(moved > 16 << 20)  // the dirtied pages went again
        #expect(try src.digest() == dst.digest())
    }

    @Test func emulatedVFIODevice() throws {
        let src = try EmulatedVFIODevice(size: 8 << 20, dirtyRate: 16 << 20, seed: 3)
        let dst = try EmulatedVFIODevice(destinationSize: 8 << 20)
        defer { src.close(); dst.close() }
        _ = try migrate(src, dst, rounds: 3, pause: 20_000)
        #expect(try src.digest() == dst.digest())
    }

    @Test func fileDevice() throws {
        let path = "/tmp/dshooks-\(getpid())-src", out = "/tmp/dshooks-\(getpid())-dst"
        defer { unlink(path); unlink(out) }
        let bytes = (0..<(3 << 20) + 123).map { UInt8(truncatingIfNeeded: $0 * 7 / 5) }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let src = try FileDevice(sourcePath: path)
        let dst = try FileDevice(destinationPath: out, size: UInt64(bytes.count))
        defer { src.close(); dst.close() }
        let (_, moved) = try migrate(src, dst, rounds: 0)
        #expect(moved == UInt64(bytes.count))
        #expect(try src.digest() == dst.digest())
    }

    /// A page written after its round was read is caught and sent again.
    @Test func writesDuringPrecopyAreSentAgain() throws {
        let src = try SimulatedDevice(size: 8 << 20, dirtyRate: 0, profile: .random, seed: 2)
        defer { src.close() }
        let saver = DeviceSaver(id: 0, device: src)
        try saver.saveSetup()
        var first: [SaveItem] = []
        try saver.plan(chunkSize: 1 << 20, into: &first)
        #expect(first.count == 8)
        src.simulateDeviceWrite(at: 5 << 20 | 4096, [1, 2, 3])
        var second: [SaveItem] = []
        try saver.plan(chunkSize: 1 << 20, into: &second)
        #expect(second == [.range(device: 0, offset: 5 << 20 | 4096, length: 4096)])
        var third: [SaveItem] = []
        try saver.plan(chunkSize: 1 << 20, into: &third)
        #expect(third.isEmpty)
    }

    /// pending: the estimate counts dirty pages; the exact figure is what the next plan sends.
    @Test func pendingEstimateAndExact() throws {
        let src = try SimulatedDevice(size: 8 << 20, dirtyRate: 0, profile: .random, seed: 2)
        defer { src.close() }
        let saver = DeviceSaver(id: 0, device: src)
        try saver.saveSetup()
        #expect(try saver.pendingEstimate().precopy == 8 << 20)
        #expect(try saver.pending(chunkSize: 1 << 20).precopy == 8 << 20)
        var items: [SaveItem] = []
        try saver.plan(chunkSize: 1 << 20, into: &items)
        #expect(try saver.pending(chunkSize: 1 << 20).precopy == 0)
        // Two pages 8 KiB apart: the estimate counts 2 pages, the plan joins them (3 pages).
        src.simulateDeviceWrite(at: 1 << 20, [1])
        src.simulateDeviceWrite(at: (1 << 20) + 8192, [2])
        #expect(try saver.pendingEstimate().precopy == 8192)
        #expect(try saver.pending(chunkSize: 1 << 20).precopy == 12288)
        var next: [SaveItem] = []
        try saver.plan(chunkSize: 1 << 20, into: &next)
        #expect(next == [.range(device: 0, offset: 1 << 20, length: 12288)])
        let stream = try EmulatedVFIODevice(size: 1 << 20, seed: 1)
        defer { stream.close() }
        let s2 = DeviceSaver(id: 1, device: stream)
        try s2.saveSetup()
        #expect(try s2.pendingEstimate().precopy > 1 << 20)  // the whole state as records
    }

    @Test func mismatchedDevicesAreRefusedAtLoadSetup() throws {
        let src = try SimulatedDevice(size: 8 << 20)
        let dst = try SimulatedDevice(destinationSize: 4 << 20)
        let emu = try EmulatedVFIODevice(destinationSize: 8 << 20)
        defer { src.close(); dst.close(); emu.close() }
        let header = DeviceSaver(id: 0, device: src).header
        #expect(throws: DeviceError.self) { _ = try DeviceLoader(id: 0, device: dst, header: header, channels: 1) }
        #expect(throws: DeviceError.self) { _ = try DeviceLoader(id: 0, device: emu, header: header, channels: 1) }
    }
}

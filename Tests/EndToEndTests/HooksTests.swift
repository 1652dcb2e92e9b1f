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
            var plan = RoundPlanItems()
            try saver.plan(chunkSize: buf.count, into: &plan)
            try saver.beginRound()
            for item in plan.items {
                switch item {
                case .pages(_, let range):
                    // Gathered as a channel does: the table, then the extents behind it, read
                    // in batches (a ring of 8 entries: several submissions per frame).
                    let extents = plan.extents[range]
                    let n = try buf.withUnsafeMutableBytes { b -> Int in
                        ExtentTable.writeHeader(count: extents.count, into: b)
                        for (i, e) in extents.enumerated() {
                            ExtentTable.writeEntry(i, offset: e.offset, length: UInt32(e.length), into: b)
                        }
                        let table = ExtentTable.size(count: extents.count)
                        let at = table + (try saver.read(extents: extents, into: b, from: table, ring: ring, slot: nil))
                        return try loader.loadPages(UnsafeRawBufferPointer(rebasing: b[0..<at]), channel: 0, ring: ring, slot: 0)
                    }
                    moved += UInt64(n)
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
        var first = RoundPlanItems()
        try saver.plan(chunkSize: 1 << 20, into: &first)
        #expect(first.pageBytes == 8 << 20 && first.harvestedBytes == 8 << 20)
        #expect(first.items.count == 9, "8 MiB in frames of at most 1 MiB with their tables")
        src.simulateDeviceWrite(at: 5 << 20 | 4096, [1, 2, 3])
        var second = RoundPlanItems()
        try saver.plan(chunkSize: 1 << 20, into: &second)
        #expect(second.items == [.pages(device: 0, extents: 0..<1)])
        #expect(second.extents == [Extent(offset: 5 << 20 | 4096, length: 4096)])
        var third = RoundPlanItems()
        try saver.plan(chunkSize: 1 << 20, into: &third)
        #expect(third.items.isEmpty && third.harvestedBytes == 0)
    }

    /// Runs of adjacent tracking chunks: the extents a plan makes before frame boundaries split them.
    @Test func runsOfDirtyChunks() {
        #expect(DeviceSaver.runs(of: []) == 0)
        #expect(DeviceSaver.runs(of: [5]) == 1)
        #expect(DeviceSaver.runs(of: [0, 1, 2, 4, 5, 9]) == 3)
        #expect(DeviceSaver.runs(of: [1, 3, 5, 7]) == 4)
    }

    /// pending: the estimate counts dirty pages; the exact figure is what the next plan sends.
    @Test func pendingEstimateAndExact() throws {
        let src = try SimulatedDevice(size: 8 << 20, dirtyRate: 0, profile: .random, seed: 2)
        defer { src.close() }
        let saver = DeviceSaver(id: 0, device: src)
        try saver.saveSetup()
        #expect(try saver.pendingEstimate().precopy == 8 << 20)
        #expect(try saver.pending(chunkSize: 1 << 20).precopy == 8 << 20)
        var items = RoundPlanItems()
        try saver.plan(chunkSize: 1 << 20, into: &items)
        #expect(try saver.pending(chunkSize: 1 << 20).precopy == 0)
        // Two pages 8 KiB apart: only the two dirty pages count and travel, never the clean
        // page between them.
        src.simulateDeviceWrite(at: 1 << 20, [1])
        src.simulateDeviceWrite(at: (1 << 20) + 8192, [2])
        #expect(try saver.pendingEstimate().precopy == 8192)
        #expect(try saver.pending(chunkSize: 1 << 20).precopy == 8192)
        // Two runs of one page each: two extents (and no frame boundary inside 8 KiB).
        #expect(try saver.pending(chunkSize: 1 << 20).extents == 2)
        var next = RoundPlanItems()
        try saver.plan(chunkSize: 1 << 20, into: &next)
        #expect(next.items == [.pages(device: 0, extents: 0..<2)])
        #expect(next.extents == [Extent(offset: 1 << 20, length: 4096), Extent(offset: (1 << 20) + 8192, length: 4096)])
        let stream = try EmulatedVFIODevice(size: 1 << 20, seed: 1)
        defer { stream.close() }
        let s2 = DeviceSaver(id: 1, device: stream)
        try s2.saveSetup()
        #expect(try s2.pendingEstimate().precopy > 1 << 20)  // the whole state as records
    }

    /// A known scattered pattern of dirty pages sends exactly those pages, nothing between them.
    @Test func scatteredDirtyPagesSendExactlyThosePages() throws {
        let src = try SimulatedDevice(size: 16 << 20, dirtyRate: 0, profile: .random, seed: 3)
        defer { src.close() }
        let saver = DeviceSaver(id: 0, device: src)
        try saver.saveSetup()
        var bulk = RoundPlanItems()
        try saver.plan(chunkSize: 1 << 20, into: &bulk)
        // 200 pages, every 7th page of the first 1400 pages plus a few at the far end.
        var pages = Set<UInt64>((0..<190).map { UInt64($0) * 7 })
        for p in [4090, 4093, 4094, 4095] as [UInt64] { pages.insert(p) }
        for p in pages { src.simulateDeviceWrite(at: p * 4096 + 17, [0xAB]) }
        var round = RoundPlanItems()
        try saver.plan(chunkSize: 1 << 20, into: &round)
        #expect(round.pageBytes == UInt64(pages.count) * 4096)
        #expect(round.harvestedBytes == round.pageBytes)
        let sent = Set(round.extents.flatMap { e in (0..<UInt64(e.length / 4096)).map { e.offset / 4096 + $0 } })
        #expect(sent == pages)
        // 4094 and 4095 are adjacent: one extent; every other run is a page on its own.
        #expect(round.extents.count == pages.count - 2)
    }

    /// A malformed extent list from the network is refused before anything is written.
    @Test func malformedPagesWriteNothing() throws {
        let src = try SimulatedDevice(size: 1 << 20, dirtyRate: 0, profile: .zero, seed: 1)
        let dst = try SimulatedDevice(destinationSize: 1 << 20)
        defer { src.close(); dst.close() }
        let loader = try DeviceLoader(id: 0, device: dst, header: DeviceSaver(id: 0, device: src).header, channels: 1)
        let before = try dst.digest()
        let ring = try Ring(entries: 4)
        // Two extents, the second past the device's end.
        var b: [UInt8] = []
        b.appendLE(UInt16(2)); b.appendLE(UInt16(0))
        b.appendLE(UInt64(0)); b.appendLE(UInt32(4096))
        b.appendLE(UInt64((1 << 20) - 1024)); b.appendLE(UInt32(4096))
        b += [UInt8](repeating: 0xEE, count: 8192)
        var caught: TransferError?
        do {
            _ = try b.withUnsafeBytes { try loader.loadPages($0, channel: 0, ring: ring, slot: 0) }
        } catch let e as TransferError { caught = e }
        #expect(caught?.code == .protocolViolation, "\(String(describing: caught))")
        #expect(caught?.message.contains("outside the device") == true)
        #expect(try dst.digest() == before, "nothing was written")
        #expect(loader.loadedBytes == 0)
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

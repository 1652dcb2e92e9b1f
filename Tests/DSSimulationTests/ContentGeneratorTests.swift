import Foundation
import Testing
@testable import DSSimulation
import DSDevices
import DSTestSupport

@Suite struct ContentGeneratorTests {
    @Test func deterministicForSameProfileAndSeed() {
        for p in ContentProfile.allCases {
            let a = ContentGenerator.bytes(count: 300_000, profile: p, seed: 7, offset: 0)
            let b = ContentGenerator.bytes(count: 300_000, profile: p, seed: 7, offset: 0)
            #expect(a == b, "profile \(p)")
            if p != .zero {
                let c = ContentGenerator.bytes(count: 300_000, profile: p, seed: 8, offset: 0)
                #expect(a != c, "profile \(p): seeds 7 and 8 gave the same bytes")
            }
        }
    }

    @Test func splitIndependent() {
        for p in ContentProfile.allCases {
            let whole = ContentGenerator.bytes(count: 200_003, profile: p, seed: 3, offset: 0)
            var rng = TestRNG(99)
            // Generate into an unaligned buffer piece by piece at odd offsets and sizes.
            var pieces = [UInt8](repeating: 0xAA, count: whole.count + 1)
            var pos = 0
            while pos < whole.count {
                let n = min(whole.count - pos, 1 + rng.below(70_000))
                pieces.withUnsafeMutableBytes { raw in
                    let sub = UnsafeMutableRawBufferPointer(rebasing: raw[(1 + pos) ..< (1 + pos + n)])
                    ContentGenerator.fill(sub, profile: p, seed: 3, offset: UInt64(pos))
                }
                pos += n
            }
            #expect(Array(pieces[1...]) == whole, "profile \(p)")
            let mid = ContentGenerator.bytes(count: 1001, profile: p, seed: 3, offset: 123_457)
            #expect(mid == Array(whole[123_457 ..< 124_458]), "profile \(p)")
        }
    }

    @Test func profilesDiffer() {
        let n = 1 << 20
        var digests: Set<UInt64> = []
        for p in ContentProfile.allCases {
            let b = ContentGenerator.bytes(count: n, profile: p, seed: 1, offset: 0)
            digests.insert(b.withUnsafeBytes { xxh3($0.baseAddress, $0.count) })
            switch p {
            case .zero: #expect(b.allSatisfy { $0 == 0 })
            case .random: #expect(b.filter { $0 == 0 }.count < n / 128)  // ~1/256 expected
            case .text:
                #expect(b.allSatisfy { $0 == 10 || ($0 >= 32 && $0 < 127) })
                #expect(String(decoding: b[0 ..< 4096], as: UTF8.self).contains(" the "))
            case .mixed: break
            }
        }
        #expect(digests.count == ContentProfile.allCases.count)
    }

    /// Release-mode timing of a 1 GiB sim image (run with DS_BENCH=1 swift test -c release -Xswiftc -enable-testing).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["DS_BENCH"] != nil))
    func benchmarkOneGiB() throws {
        let t0 = Date()
        let dev = try SimulatedDevice(size: 1 << 30, profile: .mixed)
        let t1 = Date()
        let d = try dev.digest()
        let t2 = Date()
        dev.close()
        print("1 GiB mixed fill: \(t1.timeIntervalSince(t0)) s, digest \(t2.timeIntervalSince(t1)) s (\(d))")
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 20, alignment: 4096)
        defer { buf.deallocate() }
        memset(buf.baseAddress!, 1, buf.count)
        for p in ContentProfile.allCases {
            let s = Date()
            ContentGenerator.fill(buf, profile: p, seed: 1, offset: 0)
            print("256 MiB \(p) generate only: \(Date().timeIntervalSince(s)) s")
        }
        for p in ContentProfile.allCases {
            let s = Date()
            let x = try SimulatedDevice(size: 256 << 20, profile: p)
            print("256 MiB \(p) fill: \(Date().timeIntervalSince(s)) s")
            x.close()
        }
    }

    @Test func mixedHasZeroPagesAndData() throws {
        let n = 8 << 20
        let b = ContentGenerator.bytes(count: n, profile: .mixed, seed: 1, offset: 0)
        var zeroPages = 0
        b.withUnsafeBytes { raw in
            for page in 0 ..< n / 4096 {
                let words = UnsafeRawBufferPointer(rebasing: raw[page * 4096 ..< (page + 1) * 4096])
                if words.allSatisfy({ $0 == 0 }) { zeroPages += 1 }
            }
        }
        let pages = n / 4096
        #expect(zeroPages > pages / 10, "zero pages: \(zeroPages) of \(pages)")
        #expect(zeroPages < pages * 6 / 10, "zero pages: \(zeroPages) of \(pages)")
        // Some regions are descriptor rings (incrementing 32-byte records) and tensors (floats).
        var ring32 = 0, tensor = 0
        for r in 0 ..< UInt64(n) / ContentGenerator.regionSize {
            switch ContentGenerator.regionKind(.mixed, seed: 1, region: r) {
            case .ring32: ring32 += 1
            case .tensor: tensor += 1
            default: break
            }
        }
        #expect(ring32 > 0 && tensor > 0)
        // A 32-byte descriptor ring: word 1 of record j holds index j and length 4096; word 0 the
        // address, 4096 apart from record to record.
        let ring = try #require((0 ..< UInt64(n) / ContentGenerator.regionSize).first {
            ContentGenerator.regionKind(.mixed, seed: 1, region: $0) == .ring32 })
        b.withUnsafeBytes { raw in
            let base = Int(ring * ContentGenerator.regionSize)
            for j in 0 ..< 100 {
                let word1 = raw.loadUnaligned(fromByteOffset: base + j * 32 + 8, as: UInt64.self)
                #expect(word1 == UInt64(j) | (4096 << 32))
                let a0 = raw.loadUnaligned(fromByteOffset: base + j * 32, as: UInt64.self)
                let a1 = raw.loadUnaligned(fromByteOffset: base + (j + 1) * 32, as: UInt64.self)
                #expect(a1 &- a0 == 4096)
            }
        }
        // A tensor region holds finite float32 values that change smoothly.
        let tensorRegion = try #require((0 ..< UInt64(n) / ContentGenerator.regionSize).first {
            ContentGenerator.regionKind(.mixed, seed: 1, region: $0) == .tensor })
        b.withUnsafeBytes { raw in
            let base = Int(tensorRegion * ContentGenerator.regionSize)
            var prev = Float(bitPattern: raw.loadUnaligned(fromByteOffset: base, as: UInt32.self))
            for i in 1 ..< 16384 {
                let v = Float(bitPattern: raw.loadUnaligned(fromByteOffset: base + i * 4, as: UInt32.self))
                #expect(v.isFinite && abs(v - prev) < 0.01)
                prev = v
            }
        }
    }
}

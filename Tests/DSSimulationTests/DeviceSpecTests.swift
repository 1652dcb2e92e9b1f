import Foundation
import Testing
@testable import DSSimulation
import DSDevices
import DSTestSupport
import DSSupport

@Suite struct DeviceSpecTests {
    @Test func parsesFractions() {
        #expect(DeviceSpec.parseFraction("10%") == 0.1)
        #expect(DeviceSpec.parseFraction("0.25") == 0.25)
        #expect(DeviceSpec.parseFraction("150%") == nil)
        #expect(DeviceSpec.parseFraction("x") == nil)
    }

    /// Sizes in specs follow the one size grammar (`SizeParsing`): what `--max-bandwidth` and
    /// `--chunk-size` accept, a spec accepts, with the same value.
    @Test func sizesFollowTheOneGrammar() throws {
        func emu(_ size: String, rate: String = "0") throws -> DeviceSpec.EmulatedOptions? {
            if case .vfioEmu(let o) = try DeviceSpec("vfio-emu:size=\(size),dirty-rate=\(rate)").kind { return o }
            return nil
        }
        for (text, bytes) in [("4096", 4096), ("4K", 4096), ("64M", 64 << 20), ("1G", 1 << 30), ("1.5G", 3 << 29),
                              ("2GiB", 2 << 30), ("1T", 1 << 40), ("8MB", 8 << 20), ("64 M", 64 << 20)] as [(String, UInt64)] {
            #expect(try emu(text)?.size == bytes, "'\(text)'")
            #expect(try SizeParsing.parse(text) == bytes, "'\(text)'")
        }
        // Rates take the same grammar, optionally with /s; 1.25M is a whole number of bytes.
        #expect(try emu("4K", rate: "1.25M/s")?.dirtyRate == 1_310_720)
        #expect(try emu("4K", rate: "1P")?.dirtyRate == 1 << 50)
        // The old grammar went through a Double: it took 1.000000000000000001G for 1 GiB, which
        // SizeParsing (exact decimal arithmetic) refuses as a fractional number of bytes.
        for bad in ["", "G", "1.5", "-1", "abc", "1X", "1.2.3K", "0.3K", "1.1G", "1.000000000000000001G"] {
            let err = expectError(.badSpec, "bad value '\(bad)' for size") { _ = try DeviceSpec("vfio-emu:size=\(bad)") }
            #expect(err?.message.contains(SizeParsing.acceptedForms) == true, "'\(bad)': \(err?.message ?? "")")
        }
        let err = expectError(.badSpec, "bad value '1.1G' for dirty-rate") { _ = try DeviceSpec("sim:dirty-rate=1.1G") }
        #expect(err?.message.contains("not a whole number of bytes") == true, "\(err?.message ?? "")")
        #expect(err?.message.contains("/s") == true)
    }

    @Test func parsesKinds() throws {
        let sim = try DeviceSpec("sim:size=64M,dirty-rate=8M/s,hot=25%,profile=text,seed=0x10,chunk=256K")
        var o = DeviceSpec.SimOptions()
        o.size = 64 << 20; o.sizeGiven = true; o.dirtyRate = 8 << 20; o.hotFraction = 0.25
        o.profile = .text; o.seed = 16; o.chunkSize = 256 << 10
        #expect(sim.kind == .sim(o))
        #expect(try DeviceSpec("sim:").kind == .sim(DeviceSpec.SimOptions()))
        var e = DeviceSpec.EmulatedOptions(size: 64 << 20)
        e.dirtyRate = 8 << 20; e.seed = 3
        #expect(try DeviceSpec("vfio-emu:size=64M,dirty-rate=8M,seed=3").kind == .vfioEmu(e))
        #expect(try DeviceSpec("file:/tmp/a:b").kind == .file(path: "/tmp/a:b"))
        #expect(try DeviceSpec("vfio:/dev/vfio/devices/vfio0").kind == .vfio(path: "/dev/vfio/devices/vfio0"))
        // No VFIO device exists here: the factory opens VFIODevice, which says what is missing.
        expectError(.io, "cannot open the VFIO device") { _ = try DeviceSpec("vfio:/dev/x").makeSource() }
    }

    @Test func factories() throws {
        let src = try #require(try DeviceSpec("sim:size=4M,seed=2,chunk=64K").makeSource() as? SimulatedDevice)
        defer { src.close() }
        #expect(src.size == 4 << 20 && src.trackingChunkSize == 64 << 10 && src.seed == 2 && src.state == .running)
        #expect(src.spec == "sim:size=4M,seed=2,chunk=64K")
        let dst = try #require(try DeviceSpec("sim:size=4M,chunk=64K").makeDestination(size: 4 << 20) as? SimulatedDevice)
        defer { dst.close() }
        #expect(dst.size == 4 << 20 && dst.state == .resuming && dst.isDestination)
        #expect(try dst.digest() == (try SimulatedDevice(destinationSize: 4 << 20).digest()))
        expectError(.badSpec, "source has 1048576") { _ = try DeviceSpec("sim:size=4M").makeDestination(size: 1 << 20) }
        // The peer never chooses how much memory a sim destination allocates: size= is required,
        // and a peer's size that differs (here 1 TiB) is refused before anything is allocated.
        expectError(.badSpec, "has no size=") { _ = try DeviceSpec("sim:chunk=64K").makeDestination(size: 4 << 20) }
        expectError(.badSpec, "has no size=") { try DeviceSpec("sim:").checkDestination() }
        try DeviceSpec("sim:size=4M").checkDestination()
        expectError(.badSpec, "source has 1099511627776") { _ = try DeviceSpec("sim:size=4M").makeDestination(size: 1 << 40) }
        let emu = try #require(try DeviceSpec("vfio-emu:size=64K").makeDestination(size: nil) as? EmulatedVFIODevice)
        defer { emu.close() }
        #expect(emu.state == .resuming && emu.dataKind == .orderedStream)
        expectError(.badSpec, "needs the source's size") { _ = try DeviceSpec("file:/tmp/x").makeDestination(size: nil) }
    }

    @Test func fileSpecsOpenFileDevices() throws {
        let srcPath = "/tmp/ds-spec-\(getpid())-src", dstPath = "/tmp/ds-spec-\(getpid())-dst"
        defer { unlink(srcPath); unlink(dstPath); unlink(dstPath + ".partial") }
        let content = ContentGenerator.bytes(count: 70_000, profile: .mixed, seed: 11, offset: 0)
        #expect(FileManager.default.createFile(atPath: srcPath, contents: Data(content)))
        let src = try #require(try DeviceSpec("file:\(srcPath)").makeSource() as? FileDevice)
        defer { src.close() }
        #expect(src.size == 70_000 && src.state == .running && src.spec == "file:\(srcPath)")
        let dst = try #require(try DeviceSpec("file:\(dstPath)").makeDestination(size: src.size) as? FileDevice)
        defer { dst.close() }
        #expect(dst.size == 70_000 && dst.state == .resuming && dst.isDestination)
        #expect(access(dstPath + ".partial", F_OK) == 0)
    }

    @Test(arguments: [
        ("foo:x=1", "unknown device kind 'foo' in 'foo:x=1'"),
        ("sim", "has no kind"),
        ("sim:size=abc", "bad value 'abc' for size"),
        ("sim:bogus=1", "unknown key 'bogus' for kind sim"),
        ("sim:hot=150%", "bad value '150%' for hot"),
        ("sim:profile=plaid", "bad value 'plaid' for profile"),
        ("sim:chunk=3000", "bad value '3000' for chunk"),
        ("sim:size=1000", "multiple of 4K"),
        ("sim:seed=-1", "bad value '-1' for seed"),
        ("sim:size", "is not KEY=VALUE"),
        ("vfio-emu:dirty-rate=8M", "missing size="),
        ("vfio-emu:size=1M,hot=10%", "unknown key 'hot' for kind vfio-emu"),
        ("file:", "missing path"),
        ("vfio:", "missing path"),
    ])
    func malformedSpecsListValidKinds(spec: String, problem: String) {
        let err = expectError(.badSpec, problem) { _ = try DeviceSpec(spec) }
        let message = err?.message ?? ""
        #expect(message.contains("valid kinds: sim:size=SIZE[,dirty-rate=SIZE/s][,hot=PCT][,profile=mixed|zero|random|text][,seed=N][,chunk=SIZE]; vfio-emu:size=SIZE[,dirty-rate=SIZE][,seed=N]; file:PATH; vfio:PATH"))
    }
}

import Testing
@testable import DSDevices

@Suite struct DeviceSpecTests {
    @Test func parsesSizesAndFractions() {
        #expect(DeviceSpec.parseSize("1024") == 1024)
        #expect(DeviceSpec.parseSize("4K") == 4096)
        #expect(DeviceSpec.parseSize("64M") == 64 << 20)
        #expect(DeviceSpec.parseSize("1G") == 1 << 30)
        #expect(DeviceSpec.parseSize("1.5G") == 3 << 29)
        #expect(DeviceSpec.parseSize("2GiB") == 2 << 30)
        #expect(DeviceSpec.parseSize("1T") == 1 << 40)
        for bad in ["", "G", "1.5", "-1", "abc", "1X", "1.2.3K", "0.3K"] {
            #expect(DeviceSpec.parseSize(bad) == nil, "'\(bad)'")
        }
        #expect(DeviceSpec.parseFraction("10%") == 0.1)
        #expect(DeviceSpec.parseFraction("0.25") == 0.25)
        #expect(DeviceSpec.parseFraction("150%") == nil)
        #expect(DeviceSpec.parseFraction("x") == nil)
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

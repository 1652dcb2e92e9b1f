#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import DSDevices

/// Reads a stream device until `read` returns 0.
func drain(_ d: VFIODevice, chunk: Int = 7) throws -> [UInt8] {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: chunk)
    while true {
        let n = try buf.withUnsafeMutableBytes { p in try d.read(into: p) }
        if n == 0 { return out }
        out += buf[0..<n]
    }
}

func write(_ d: VFIODevice, _ bytes: [UInt8]) throws {
    try bytes.withUnsafeBytes { p in try d.write(p) }
}

/// The error a throwing call gives.
func error<T>(_ body: () throws -> T) -> DeviceError? {
    do { _ = try body(); return nil } catch let e as DeviceError { return e } catch {
        Issue.record("not a DeviceError: \(error)")
        return nil
    }
}

@Suite("VFIODevice over a fake kernel")
struct VFIODeviceTests {
    @Test func openAndProbe() throws {
        let k = FakeVFIOKernel()
        let d = try VFIODevice(path: "/dev/vfio/devices/vfio0", layer: k)
        #expect(d.spec == "vfio:/dev/vfio/devices/vfio0")
        #expect(d.dataKind == .orderedStream)
        #expect(d.migrationFlags == [.stopCopy, .preCopy])
        #expect(d.state == .running)
        #expect(d.probe(feature: VFIOUAPI.featureMigration))
        #expect(d.probe(feature: VFIOUAPI.featureMigDeviceState, ops: VFIOUAPI.featureGet | VFIOUAPI.featureSet))
        #expect(!d.probe(feature: VFIOUAPI.featureMigration, ops: VFIOUAPI.featureSet), "MIGRATION is GET-only")
        #expect(d.probe(feature: VFIOUAPI.featureMigDataSize))
        #expect(!d.probe(feature: 0x55))
        #expect(k.state.ioctlRequests.allSatisfy { $0 == 0x3B75 })
        d.close()
    }

    @Test func openErrors() {
        let k = FakeVFIOKernel()
        let missing = error { try VFIODevice(path: "/dev/vfio/devices/vfio9", layer: k) }
        #expect(missing?.code == .io)
        #expect(missing?.message.contains("/dev/vfio/devices/vfio9") == true)
        #expect(missing?.message.contains("ENOENT") == true)
        #expect(error { try VFIODevice(path: "", layer: k) }?.code == .badSpec)
        #expect(error { try VFIODevice(path: "/dev/vfio/7@", layer: k) }?.code == .badSpec)

        var c = FakeVFIOKernel.Config()
        c.migratable = false
        let k2 = FakeVFIOKernel(c)
        let e = error { try VFIODevice(path: c.devicePath, layer: k2) }
        #expect(e?.code == .unsupported)
        #expect(e?.message.contains("does not support VFIO migration") == true)
        #expect(k2.state.fds.isEmpty, "the device fd is closed on failure")

        var c3 = FakeVFIOKernel.Config()
        c3.flags = [.p2p]
        #expect(error { try VFIODevice(path: c3.devicePath, layer: FakeVFIOKernel(c3)) }?.code == .unsupported)
    }

    @Test func groupAndDeviceName() throws {
        let k = FakeVFIOKernel()
        let d = try VFIODevice(path: "/dev/vfio/7@0000:06:0d.0", layer: k)
        #expect(d.spec == "vfio:/dev/vfio/7@0000:06:0d.0")
        #expect(k.state.ioctlRequests.first == 0x3B6A)
        #expect(k.state.fds.count == 2)
        d.close()
        d.close()
        #expect(k.state.fds.isEmpty)
        let e = error { try VFIODevice(path: "/dev/vfio/7@0000:99:00.0", layer: k) }
        #expect(e?.code == .io)
        #expect(e?.message.contains("VFIO_GROUP_GET_DEVICE_FD") == true)
        #expect(e?.message.contains("0000:99:00.0") == true)
        #expect(k.state.fds.isEmpty)
    }

    @Test func fullMigrationWithPreCopy() throws {
        let src = FakeVFIOKernel()
        let s = try VFIODevice(path: src.state.config.devicePath, layer: src)
        try s.setState(.preCopy)
        #expect(src.state.setArcs == [.preCopy])
        let image = src.state.config.image
        let initial = try s.precopyInfo()
        #expect(initial == PrecopyInfo(initialBytes: UInt64(FakeVFIOKernel.magic.count + image.count), dirtyBytes: 0))
        var stream = try drain(s)   // ends on ENOMSG, read as 0
        #expect(stream.count == FakeVFIOKernel.magic.count + image.count)
        #expect(try s.precopyInfo() == PrecopyInfo(initialBytes: 0, dirtyBytes: 0))
        src.dirtyData([9, 9, 9])
        #expect(try s.precopyInfo() == PrecopyInfo(initialBytes: 0, dirtyBytes: 3))
        #expect(try s.stopCopySize() == 3)
        stream += try drain(s)
        src.dirtyData([8, 8])
        try s.setState(.stopCopy)
        #expect(src.state.setArcs == [.preCopy, .stopCopy])
        #expect(error { try s.precopyInfo() }?.code == .invalidState)
        stream += try drain(s)
        let dataFD = src.state.fds.first { if case .save = $0.value { true } else { false } }!.key
        try s.setState(.stop)
        #expect(src.state.closed.contains(dataFD), "data_fd closed on leaving STOP_COPY")
        #expect(try s.saveConfig() == [])

        let dst = FakeVFIOKernel()
        let d = try VFIODevice(path: dst.state.config.devicePath, layer: dst)
        try d.setState(.resuming)
        #expect(dst.state.setArcs == [.stop, .resuming])
        try write(d, Array(stream[0..<10]))
        try write(d, Array(stream[10...]))
        try d.loadConfig([])
        try d.setState(.running)
        #expect(dst.state.setArcs == [.stop, .resuming, .stop, .running])
        #expect(dst.state.loaded == image + [9, 9, 9, 8, 8])
        #expect(d.state == .running)
    }

    @Test func oneSetPerArc() throws {
        var c = FakeVFIOKernel.Config()
        c.flags = [.stopCopy, .p2p, .preCopy]
        let k = FakeVFIOKernel(c)
        let d = try VFIODevice(path: c.devicePath, layer: k)
        try d.setState(.stopCopy)
        #expect(k.state.setArcs == [.runningP2P, .stop, .stopCopy])
        #expect(d.state == .stopCopy)
        #expect(try drain(d).count == FakeVFIOKernel.magic.count + c.image.count)
        try d.setState(.running)
        #expect(k.state.setArcs == [.runningP2P, .stop, .stopCopy, .stop, .runningP2P, .running])
        try d.setState(.preCopyP2P)
        #expect(k.state.setArcs.suffix(2) == [.runningP2P, .preCopyP2P])
        #expect(try d.precopyInfo().initialBytes > 0)
        try d.setState(.running)   // PRE_COPY_P2P -> RUNNING_P2P -> RUNNING
        #expect(k.state.setArcs.suffix(2) == [.runningP2P, .running])
        try d.setState(.running)   // no arc
        #expect(k.state.setArcs.count == 10)
    }

    @Test func blockedTransitions() throws {
        let k = FakeVFIOKernel()
        let d = try VFIODevice(path: k.state.config.devicePath, layer: k)
        let p2p = error { try d.setState(.preCopyP2P) }
        #expect(p2p?.code == .blockedTransition)
        #expect(p2p?.message.contains("RUNNING to PRE_COPY_P2P") == true)
        #expect(p2p?.message.contains("does not support PRE_COPY_P2P") == true)
        #expect(error { try d.setState(.error) }?.code == .blockedTransition)
        try d.setState(.stopCopy)
        let back = error { try d.setState(.preCopy) }
        #expect(back?.code == .blockedTransition)
        #expect(back?.message.contains("/dev/vfio/devices/vfio0") == true)
        #expect(back?.message.contains("STOP_COPY to PRE_COPY") == true)
        #expect(d.state == .stopCopy, "a blocked transition touches nothing")
        #expect(k.deviceState == .stopCopy)
    }

    @Test func failedArcLeavesError() throws {
        let k = FakeVFIOKernel()
        let d = try VFIODevice(path: k.state.config.devicePath, layer: k)
        k.failNextSet(errno: EIO)
        let e = error { try d.setState(.stop) }
        #expect(e?.code == .io)
        #expect(e?.message.contains("EIO") == true)
        #expect(e?.message.contains("RUNNING -> STOP") == true)
        #expect(d.state == .error)
        let stuck = error { try d.setState(.running) }
        #expect(stuck?.code == .blockedTransition)
        #expect(stuck?.message.contains("VFIO_DEVICE_RESET") == true)
    }

    @Test func precopyInfoENOMSGAndStates() throws {
        let k = FakeVFIOKernel()
        let d = try VFIODevice(path: k.state.config.devicePath, layer: k)
        let e = error { try d.precopyInfo() }
        #expect(e?.code == .invalidState)
        #expect(e?.message.contains("PRE_COPY") == true)
        try d.setState(.preCopy)
        k.setPrecopyInfoENOMSG(true)
        #expect(try d.precopyInfo() == PrecopyInfo(initialBytes: 0, dirtyBytes: 0))
        k.setPrecopyInfoENOMSG(false)
        #expect(try d.precopyInfo().initialBytes == UInt64(FakeVFIOKernel.magic.count + k.state.config.image.count))
        #expect(k.state.ioctlRequests.contains(0x3B79))
    }

    @Test func dataSize() throws {
        let k = FakeVFIOKernel()
        let d = try VFIODevice(path: k.state.config.devicePath, layer: k)
        #expect(try d.stopCopySize() == UInt64(FakeVFIOKernel.magic.count + k.state.config.image.count))
        var c = FakeVFIOKernel.Config()
        c.supportsDataSize = false
        let d2 = try VFIODevice(path: c.devicePath, layer: FakeVFIOKernel(c))
        let e = error { try d2.stopCopySize() }
        #expect(e?.code == .unsupported)
        #expect(e?.message.contains("MIG_DATA_SIZE") == true)
    }

    @Test func dataPlaneOnlyInItsStates() throws {
        let k = FakeVFIOKernel()
        let d = try VFIODevice(path: k.state.config.devicePath, layer: k)
        var buf = [UInt8](repeating: 0, count: 8)
        func readErr() -> DeviceError? {
            error { try buf.withUnsafeMutableBytes { p in try d.read(into: p) } }
        }
        #expect(readErr()?.code == .invalidState)          // RUNNING
        #expect(error { try write(d, [1]) }?.code == .invalidState)
        try d.setState(.stop)
        #expect(readErr()?.code == .invalidState)
        try d.setState(.resuming)
        #expect(readErr()?.code == .invalidState)
        #expect(readErr()?.message.contains("RESUMING") == true)
        try write(d, FakeVFIOKernel.magic)   // a valid (empty) image, so RESUMING -> STOP loads
        try d.setState(.stop)
        try d.setState(.stopCopy)
        let w = error { try write(d, [1]) }
        #expect(w?.code == .invalidState)
        #expect(w?.message.contains("RESUMING only") == true)
        #expect(error { try d.loadConfig([]) }?.code == .invalidState)
    }

    @Test func malformedStream() throws {
        let k = FakeVFIOKernel()
        let d = try VFIODevice(path: k.state.config.devicePath, layer: k)
        try d.setState(.resuming)
        #expect(error { try d.loadConfig([1, 2]) }?.code == .malformedStream)
        try write(d, [0, 1, 2, 3])
        let e = error { try d.setState(.running) }
        #expect(e?.code == .malformedStream)
        #expect(e?.message.contains("EINVAL") == true)
        #expect(d.state == .error)
    }

    @Test func digestConfigAndClose() throws {
        let k = FakeVFIOKernel()
        let d = try VFIODevice(path: k.state.config.devicePath, layer: k)
        let e = error { try d.digest() }
        #expect(e?.code == .unsupported)
        #expect(e?.message.contains("cannot be digested") == true)
        #expect(try d.saveConfig() == [])
        try d.setState(.preCopy)
        #expect(k.state.fds.count == 2)
        d.close()
        d.close()
        #expect(k.state.fds.isEmpty)
        #expect(error { try d.setState(.running) }?.code == .invalidState)
        #expect(error { try d.precopyInfo() }?.code == .invalidState)
    }

    // MARK: A device fd the VMM owns

    /// From a VMM's fd: the library drives the migration state through it, closes the data_fds
    /// it got, and leaves the borrowed device fd open, in the state it reported.
    @Test func fromBorrowedFD() throws {
        let k = FakeVFIOKernel()
        let fd = k.open(k.state.config.devicePath)   // the VMM's own fd
        #expect(fd >= 0)
        let d = try VFIODevice(fd: fd, layer: k)
        #expect(d.ownership == .borrowed)
        #expect(d.spec == "vfio:fd \(fd)")
        #expect(d.migrationFlags == [.stopCopy, .preCopy] && d.state == .running)
        try d.setState(.preCopy)
        var stream = try drain(d)
        try d.setState(.stopCopy)
        stream += try drain(d)
        #expect(stream == FakeVFIOKernel.magic + k.state.config.image)
        try d.setState(.stop)
        try d.setState(.preCopy)   // a data_fd open at close, too
        d.close()
        d.close()
        #expect(k.state.fds[fd] == .device, "a borrowed fd stays open")
        #expect(!k.state.closed.contains(fd))
        #expect(k.state.fds.count == 1, "every data_fd the library got is closed")
        // The VMM's fd still works, and the device is where the library left it.
        let again = try VFIODevice(fd: fd, name: "0000:06:0d.0", layer: k)
        #expect(again.spec == "vfio:0000:06:0d.0" && again.path == "0000:06:0d.0")
        #expect(again.state == .preCopy)
        try again.setState(.running)
        again.close()
        #expect(k.state.fds[fd] == .device)
        k.close(fd)
    }

    /// With `.owned` the fd is the device's: `close()` closes it, and so does a failed init.
    @Test func fromOwnedFD() throws {
        let k = FakeVFIOKernel()
        // A device fd from the group, as a VMM using the legacy group interface gets it.
        let group = k.open(k.state.config.groupPath)
        var name = Array(k.state.config.deviceName.utf8CString)
        let fd = name.withUnsafeMutableBytes { k.ioctl(group, VFIOUAPI.groupGetDeviceFD, $0.baseAddress!) }
        #expect(fd >= 0)
        let d = try VFIODevice(fd: fd, ownership: .owned, layer: k)
        #expect(d.ownership == .owned)
        try d.setState(.stop)
        d.close()
        #expect(k.state.closed.contains(fd))
        #expect(k.state.fds[group] == .group, "the group fd is the VMM's: never touched")

        var c = FakeVFIOKernel.Config()
        c.migratable = false
        let k2 = FakeVFIOKernel(c)
        let borrowed = k2.open(c.devicePath)
        #expect(error { try VFIODevice(fd: borrowed, layer: k2) }?.code == .unsupported)
        #expect(k2.state.fds[borrowed] == .device, "a failed init leaves a borrowed fd open")
        let owned = k2.open(c.devicePath)
        let e = error { try VFIODevice(fd: owned, ownership: .owned, layer: k2) }
        #expect(e?.code == .unsupported)
        #expect(e?.message.contains("vfio:fd \(owned)") == true)
        #expect(k2.state.closed.contains(owned), "a failed init closes an owned fd")

        #expect(error { try VFIODevice(fd: -1, layer: k) }?.code == .badSpec)
        let notOpen = error { try VFIODevice(fd: 9999, layer: k) }
        #expect(notOpen?.code == .io)
        #expect(notOpen?.message.contains("EBADF") == true)
    }
}

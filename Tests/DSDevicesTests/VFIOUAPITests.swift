import Testing
@testable import DSDevices

/// The expected numbers are written out by hand (Swift cannot import linux/vfio.h through Glibc).
/// Those the Debian 12 header (linux-libc-dev 6.1) has were checked against it with a C program
/// printing them: VFIO_DEVICE_FEATURE 0x3b75, VFIO_GROUP_GET_DEVICE_FD 0x3b6a, FEATURE_MASK 0xffff,
/// GET 0x10000, SET 0x20000, PROBE 0x40000, MIGRATION 1, MIG_DEVICE_STATE 2, STOP_COPY 1, P2P 2,
/// sizeof(vfio_device_feature) 8, sizeof(vfio_device_feature_migration) 8,
/// sizeof(vfio_device_feature_mig_state) 8, v1 VFIO_DEVICE_STATE_MASK 7 and
/// vfio_device_migration_info offsets 0/8/16/24, size 32.
/// The PRE_COPY-era ones (VFIO_MIG_GET_PRECOPY_INFO, MIG_DATA_SIZE = 9, PRE_COPY = 4,
/// vfio_precopy_info 24 bytes) follow Linux 6.2+ include/uapi/linux/vfio.h.
@Suite("VFIO UAPI")
struct VFIOUAPITests {
    @Test func ioctlNumbers() {
        #expect(VFIOUAPI.type == 0x3B)
        #expect(VFIOUAPI.base == 100)
        // _IO(';', n) = (0 << 30) | (0x3B << 8) | n | (0 << 16)
        #expect(VFIOUAPI.io(0x3B, 117) == 0x3B75)
        #expect(VFIOUAPI.deviceFeature == 0x3B75)
        #expect(VFIOUAPI.migGetPrecopyInfo == 0x3B79)
        #expect(VFIOUAPI.groupGetDeviceFD == 0x3B6A)
        // _IOC with a direction and size, for the encoding itself: _IOR('T', 0x01, 4 bytes)
        #expect(VFIOUAPI.ioc(dir: 2, type: UInt8(ascii: "T"), nr: 1, size: 4) == 0x8004_5401)
    }

    @Test func featureFlags() {
        #expect(VFIOUAPI.featureMask == 0xffff)
        #expect(VFIOUAPI.featureGet == 0x10000)
        #expect(VFIOUAPI.featureSet == 0x20000)
        #expect(VFIOUAPI.featureProbe == 0x40000)
        #expect(VFIOUAPI.featureMigration == 1)
        #expect(VFIOUAPI.featureMigDeviceState == 2)
        #expect(VFIOUAPI.featureMigDataSize == 9)
    }

    @Test func deviceFeatureLayout() {
        let f = VFIODeviceFeature(flags: VFIOUAPI.featureGet | VFIOUAPI.featureMigration, data: [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(VFIOUAPI.featureHeaderSize == 8)
        #expect(f.argsz == 16)
        #expect(f.index == 1)
        let b = f.encoded()
        #expect(b == [16, 0, 0, 0, 0x01, 0x00, 0x01, 0x00, 1, 2, 3, 4, 5, 6, 7, 8])
        #expect(VFIODeviceFeature.decode(b) == f)
        #expect(VFIODeviceFeature.decode([1, 2, 3]) == nil)
    }

    @Test func migrationStructs() {
        let m = VFIODeviceFeatureMigration(flags: [.stopCopy, .p2p, .preCopy])
        #expect(VFIODeviceFeatureMigration.size == 8)
        #expect(m.encoded() == [7, 0, 0, 0, 0, 0, 0, 0])
        #expect(VFIODeviceFeatureMigration.decode(m.encoded()) == m)

        let s = VFIODeviceFeatureMigState(deviceState: VFIODeviceState.preCopyP2P.rawValue, dataFD: -1)
        #expect(VFIODeviceFeatureMigState.size == 8)
        #expect(s.encoded() == [7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
        #expect(VFIODeviceFeatureMigState.decode(s.encoded()) == s)
        #expect(VFIODeviceFeatureMigState.decode([3, 0, 0, 0, 42, 0, 0, 0]) == .init(deviceState: 3, dataFD: 42))

        let d = VFIODeviceFeatureMigDataSize(stopCopyLength: 0x0102_0304_0506_0708)
        #expect(VFIODeviceFeatureMigDataSize.size == 8)
        #expect(d.encoded() == [8, 7, 6, 5, 4, 3, 2, 1])
        #expect(VFIODeviceFeatureMigDataSize.decode(d.encoded()) == d)
    }

    @Test func precopyInfoLayout() {
        let p = VFIOPrecopyInfo(flags: 0, initialBytes: 0x1122, dirtyBytes: 0x33)
        #expect(VFIOPrecopyInfo.size == 24)
        #expect(p.argsz == 24)
        let b = p.encoded()
        #expect(b.count == 24)
        #expect(Array(b[0..<4]) == [24, 0, 0, 0])
        #expect(Array(b[4..<8]) == [0, 0, 0, 0])
        #expect(Array(b[8..<16]) == [0x22, 0x11, 0, 0, 0, 0, 0, 0])
        #expect(Array(b[16..<24]) == [0x33, 0, 0, 0, 0, 0, 0, 0])
        #expect(VFIOPrecopyInfo.decode(b) == p)
        #expect(VFIOPrecopyInfo.decode(Array(b[0..<23])) == nil)
    }
}

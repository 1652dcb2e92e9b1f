// The VFIO v2 migration UAPI: ioctl numbers, flags and struct layouts from Linux
// `include/uapi/linux/vfio.h`, with their C names.
//
// Debian 12's kernel headers (linux-libc-dev 6.1) predate PRE_COPY (Linux 6.2): they lack
// `VFIO_MIGRATION_PRE_COPY`, `VFIO_DEVICE_STATE_PRE_COPY(_P2P)`, `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`,
// `struct vfio_device_feature_mig_data_size`, `struct vfio_precopy_info` and
// `VFIO_MIG_GET_PRECOPY_INFO`, so everything is defined here from the kernel UAPI rather than
// imported from the system header. The tests check the values the 6.1 header does have. The
// structs are encoded little-endian (VFIO hosts are little-endian: x86-64, arm64; the structs
// use host order).

import DSSupport

/// Constants of `include/uapi/linux/vfio.h` and `include/uapi/asm-generic/ioctl.h`.
package enum VFIOUAPI {
    // MARK: ioctl encoding (asm-generic/ioctl.h)

    /// `_IOC_NRSHIFT`.
    package static let iocNRShift: UInt = 0
    /// `_IOC_TYPESHIFT` (`_IOC_NRSHIFT + _IOC_NRBITS`, 8 bits of nr).
    package static let iocTypeShift: UInt = 8
    /// `_IOC_SIZESHIFT` (`_IOC_TYPESHIFT + _IOC_TYPEBITS`).
    package static let iocSizeShift: UInt = 16
    /// `_IOC_DIRSHIFT` (`_IOC_SIZESHIFT + _IOC_SIZEBITS`, 14 bits of size).
    package static let iocDirShift: UInt = 30
    /// `_IOC_NONE`.
    package static let iocNone: UInt = 0

    /// `_IOC(dir, type, nr, size)`.
    package static func ioc(dir: UInt, type: UInt8, nr: UInt8, size: UInt) -> UInt {
        (dir << iocDirShift) | (UInt(type) << iocTypeShift) | (UInt(nr) << iocNRShift)
            | (size << iocSizeShift)
    }

    /// `_IO(type, nr)`: `_IOC(_IOC_NONE, type, nr, 0)`. VFIO encodes all its ioctls this way;
    /// the argument size is carried in `argsz` instead.
    package static func io(_ type: UInt8, _ nr: UInt8) -> UInt {
        ioc(dir: iocNone, type: type, nr: nr, size: 0)
    }

    // MARK: VFIO ioctls

    /// `VFIO_TYPE` (`';'`, 0x3B).
    package static let type = UInt8(ascii: ";")
    /// `VFIO_BASE` (100).
    package static let base: UInt8 = 100

    /// `VFIO_GROUP_GET_DEVICE_FD`: `_IO(VFIO_TYPE, VFIO_BASE + 6)` = 0x3B6A; the argument is the
    /// device name string (e.g. `0000:06:0d.0`); returns a new device fd.
    package static let groupGetDeviceFD = io(type, base + 6)
    /// `VFIO_DEVICE_FEATURE`: `_IO(VFIO_TYPE, VFIO_BASE + 17)` = 0x3B75, on the device fd,
    /// with a `struct vfio_device_feature`.
    package static let deviceFeature = io(type, base + 17)
    /// `VFIO_MIG_GET_PRECOPY_INFO`: `_IO(VFIO_TYPE, VFIO_BASE + 21)` = 0x3B79, on the `data_fd`,
    /// with a `struct vfio_precopy_info`; valid in PRE_COPY and PRE_COPY_P2P only.
    package static let migGetPrecopyInfo = io(type, base + 21)

    // MARK: struct vfio_device_feature.flags

    /// `VFIO_DEVICE_FEATURE_MASK` (0xffff): the 16-bit feature index.
    package static let featureMask: UInt32 = 0xffff
    /// `VFIO_DEVICE_FEATURE_GET` (`1 << 16`): get feature into `data[]`.
    package static let featureGet: UInt32 = 1 << 16
    /// `VFIO_DEVICE_FEATURE_SET` (`1 << 17`): set feature from `data[]`.
    package static let featureSet: UInt32 = 1 << 17
    /// `VFIO_DEVICE_FEATURE_PROBE` (`1 << 18`): probe feature support.
    package static let featureProbe: UInt32 = 1 << 18

    // MARK: feature indices

    /// `VFIO_DEVICE_FEATURE_MIGRATION` (1): GET `struct vfio_device_feature_migration`.
    package static let featureMigration: UInt32 = 1
    /// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` (2): GET/SET `struct vfio_device_feature_mig_state`.
    package static let featureMigDeviceState: UInt32 = 2
    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE` (9): GET `struct vfio_device_feature_mig_data_size`.
    package static let featureMigDataSize: UInt32 = 9

    // MARK: struct sizes

    /// `sizeof(struct vfio_device_feature)`: `{ __u32 argsz; __u32 flags; __u8 data[]; }`.
    package static let featureHeaderSize = 8
}

/// `struct vfio_device_feature { __u32 argsz; __u32 flags; __u8 data[]; }` (8-byte header).
package struct VFIODeviceFeature: Sendable, Equatable {
    package var argsz: UInt32
    package var flags: UInt32
    package var data: [UInt8]

    package init(flags: UInt32, data: [UInt8]) {
        self.argsz = UInt32(VFIOUAPI.featureHeaderSize + data.count)
        self.flags = flags
        self.data = data
    }

    /// The feature index (`flags & VFIO_DEVICE_FEATURE_MASK`).
    package var index: UInt32 { flags & VFIOUAPI.featureMask }

    /// The bytes of the whole argument, header then data.
    package func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(VFIOUAPI.featureHeaderSize + data.count)
        b.appendLE(argsz)
        b.appendLE(flags)
        return b + data
    }

    /// Decodes an argument; nil when shorter than the header. `data` is what follows the header,
    /// up to `argsz` (and the buffer's end).
    package static func decode(_ b: [UInt8]) -> VFIODeviceFeature? {
        guard b.count >= VFIOUAPI.featureHeaderSize else { return nil }
        let argsz = b.loadLE(at: 0, as: UInt32.self)
        let end = min(b.count, max(VFIOUAPI.featureHeaderSize, Int(argsz)))
        var f = VFIODeviceFeature(flags: b.loadLE(at: 4, as: UInt32.self),
                                  data: Array(b[VFIOUAPI.featureHeaderSize..<end]))
        f.argsz = argsz
        return f
    }
}

/// `struct vfio_device_feature_migration { __aligned_u64 flags; }` (8 bytes).
package struct VFIODeviceFeatureMigration: Sendable, Equatable {
    package static let size = 8
    package var flags: VFIOMigrationFlags
    package init(flags: VFIOMigrationFlags) { self.flags = flags }
    package func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.appendLE(flags.rawValue)
        return b
    }
    package static func decode(_ b: [UInt8]) -> Self? {
        guard b.count >= size else { return nil }
        return Self(flags: VFIOMigrationFlags(rawValue: b.loadLE(at: 0, as: UInt64.self)))
    }
}

/// `struct vfio_device_feature_mig_state { __u32 device_state; __s32 data_fd; }` (8 bytes).
package struct VFIODeviceFeatureMigState: Sendable, Equatable {
    package static let size = 8
    /// Raw `enum vfio_device_mig_state` (kept raw: a kernel may report a state this code lacks).
    package var deviceState: UInt32
    package var dataFD: Int32
    package init(deviceState: UInt32, dataFD: Int32 = -1) {
        self.deviceState = deviceState
        self.dataFD = dataFD
    }
    package func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.appendLE(deviceState)
        b.appendLE(dataFD)
        return b
    }
    package static func decode(_ b: [UInt8]) -> Self? {
        guard b.count >= size else { return nil }
        return Self(deviceState: b.loadLE(at: 0, as: UInt32.self),
                    dataFD: b.loadLE(at: 4, as: Int32.self))
    }
}

/// `struct vfio_device_feature_mig_data_size { __aligned_u64 stop_copy_length; }` (8 bytes).
package struct VFIODeviceFeatureMigDataSize: Sendable, Equatable {
    package static let size = 8
    package var stopCopyLength: UInt64
    package init(stopCopyLength: UInt64) { self.stopCopyLength = stopCopyLength }
    package func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.appendLE(stopCopyLength)
        return b
    }
    package static func decode(_ b: [UInt8]) -> Self? {
        guard b.count >= size else { return nil }
        return Self(stopCopyLength: b.loadLE(at: 0, as: UInt64.self))
    }
}

/// `struct vfio_precopy_info { __u32 argsz; __u32 flags; __aligned_u64 initial_bytes;
/// __aligned_u64 dirty_bytes; }` (24 bytes).
package struct VFIOPrecopyInfo: Sendable, Equatable {
    package static let size = 24
    package var argsz: UInt32
    package var flags: UInt32
    package var initialBytes: UInt64
    package var dirtyBytes: UInt64
    package init(argsz: UInt32 = UInt32(VFIOPrecopyInfo.size), flags: UInt32 = 0,
                initialBytes: UInt64 = 0, dirtyBytes: UInt64 = 0) {
        self.argsz = argsz
        self.flags = flags
        self.initialBytes = initialBytes
        self.dirtyBytes = dirtyBytes
    }
    package func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(Self.size)
        b.appendLE(argsz)
        b.appendLE(flags)
        b.appendLE(initialBytes)
        b.appendLE(dirtyBytes)
        return b
    }
    package static func decode(_ b: [UInt8]) -> Self? {
        guard b.count >= size else { return nil }
        return Self(argsz: b.loadLE(at: 0, as: UInt32.self), flags: b.loadLE(at: 4, as: UInt32.self),
                    initialBytes: b.loadLE(at: 8, as: UInt64.self), dirtyBytes: b.loadLE(at: 16, as: UInt64.self))
    }
}

extension VFIOUAPI {
    /// Copies `bytes` into raw memory (for an ioctl argument).
    static func store(_ bytes: [UInt8], to p: UnsafeMutableRawPointer) {
        bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
    /// Copies `count` bytes out of raw memory.
    static func load(_ p: UnsafeRawPointer, count: Int) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: p, count: count))
    }
}

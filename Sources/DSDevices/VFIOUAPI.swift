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
public enum VFIOUAPI {
    // MARK: ioctl encoding (asm-generic/ioctl.h)

    /// `_IOC_NRSHIFT`.
    public static let iocNRShift: UInt = 0
    /// `_IOC_TYPESHIFT` (`_IOC_NRSHIFT + _IOC_NRBITS`, 8 bits of nr).
    public static let iocTypeShift: UInt = 8
    /// `_IOC_SIZESHIFT` (`_IOC_TYPESHIFT + _IOC_TYPEBITS`).
    public static let iocSizeShift: UInt = 16
    /// `_IOC_DIRSHIFT` (`_IOC_SIZESHIFT + _IOC_SIZEBITS`, 14 bits of size).
    public static let iocDirShift: UInt = 30
    /// `_IOC_NONE`.
    public static let iocNone: UInt = 0

    /// `_IOC(dir, type, nr, size)`.
    public static func ioc(dir: UInt, type: UInt8, nr: UInt8, size: UInt) -> UInt {
        (dir << iocDirShift) | (UInt(type) << iocTypeShift) | (UInt(nr) << iocNRShift)
            | (size << iocSizeShift)
    }

    /// `_IO(type, nr)`: `_IOC(_IOC_NONE, type, nr, 0)`. VFIO encodes all its ioctls this way;
    /// the argument size is carried in `argsz` instead.
    public static func io(_ type: UInt8, _ nr: UInt8) -> UInt {
        ioc(dir: iocNone, type: type, nr: nr, size: 0)
    }

    // MARK: VFIO ioctls

    /// `VFIO_TYPE` (`';'`, 0x3B).
    public static let type = UInt8(ascii: ";")
    /// `VFIO_BASE` (100).
    public static let base: UInt8 = 100

    /// `VFIO_GROUP_GET_DEVICE_FD`: `_IO(VFIO_TYPE, VFIO_BASE + 6)` = 0x3B6A; the argument is the
    /// device name string (e.g. `0000:06:0d.0`); returns a new device fd.
    public static let groupGetDeviceFD = io(type, base + 6)
    /// `VFIO_DEVICE_FEATURE`: `_IO(VFIO_TYPE, VFIO_BASE + 17)` = 0x3B75, on the device fd,
    /// with a `struct vfio_device_feature`.
    public static let deviceFeature = io(type, base + 17)
    /// `VFIO_MIG_GET_PRECOPY_INFO`: `_IO(VFIO_TYPE, VFIO_BASE + 21)` = 0x3B79, on the `data_fd`,
    /// with a `struct vfio_precopy_info`; valid in PRE_COPY and PRE_COPY_P2P only.
    public static let migGetPrecopyInfo = io(type, base + 21)

    // MARK: struct vfio_device_feature.flags

    /// `VFIO_DEVICE_FEATURE_MASK` (0xffff): the 16-bit feature index.
    public static let featureMask: UInt32 = 0xffff
    /// `VFIO_DEVICE_FEATURE_GET` (`1 << 16`): get feature into `data[]`.
    public static let featureGet: UInt32 = 1 << 16
    /// `VFIO_DEVICE_FEATURE_SET` (`1 << 17`): set feature from `data[]`.
    public static let featureSet: UInt32 = 1 << 17
    /// `VFIO_DEVICE_FEATURE_PROBE` (`1 << 18`): probe feature support.
    public static let featureProbe: UInt32 = 1 << 18

    // MARK: feature indices

    /// `VFIO_DEVICE_FEATURE_MIGRATION` (1): GET `struct vfio_device_feature_migration`.
    public static let featureMigration: UInt32 = 1
    /// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` (2): GET/SET `struct vfio_device_feature_mig_state`.
    public static let featureMigDeviceState: UInt32 = 2
    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE` (9): GET `struct vfio_device_feature_mig_data_size`.
    public static let featureMigDataSize: UInt32 = 9

    // MARK: struct sizes

    /// `sizeof(struct vfio_device_feature)`: `{ __u32 argsz; __u32 flags; __u8 data[]; }`.
    public static let featureHeaderSize = 8
}

/// `struct vfio_device_feature { __u32 argsz; __u32 flags; __u8 data[]; }` (8-byte header).
public struct VFIODeviceFeature: Sendable, Equatable {
    public var argsz: UInt32
    public var flags: UInt32
    public var data: [UInt8]

    public init(flags: UInt32, data: [UInt8]) {
        self.argsz = UInt32(VFIOUAPI.featureHeaderSize + data.count)
        self.flags = flags
        self.data = data
    }

    /// The feature index (`flags & VFIO_DEVICE_FEATURE_MASK`).
    public var index: UInt32 { flags & VFIOUAPI.featureMask }

    /// The bytes of the whole argument, header then data.
    public func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(VFIOUAPI.featureHeaderSize + data.count)
        b.appendLE(argsz)
        b.appendLE(flags)
        return b + data
    }

    /// Decodes an argument; nil when shorter than the header. `data` is what follows the header,
    /// up to `argsz` (and the buffer's end).
    public static func decode(_ b: [UInt8]) -> VFIODeviceFeature? {
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
public struct VFIODeviceFeatureMigration: Sendable, Equatable {
    public static let size = 8
    public var flags: VFIOMigrationFlags
    public init(flags: VFIOMigrationFlags) { self.flags = flags }
    public func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.appendLE(flags.rawValue)
        return b
    }
    public static func decode(_ b: [UInt8]) -> Self? {
        guard b.count >= size else { return nil }
        return Self(flags: VFIOMigrationFlags(rawValue: b.loadLE(at: 0, as: UInt64.self)))
    }
}

/// `struct vfio_device_feature_mig_state { __u32 device_state; __s32 data_fd; }` (8 bytes).
public struct VFIODeviceFeatureMigState: Sendable, Equatable {
    public static let size = 8
    /// Raw `enum vfio_device_mig_state` (kept raw: a kernel may report a state this code lacks).
    public var deviceState: UInt32
    public var dataFD: Int32
    public init(deviceState: UInt32, dataFD: Int32 = -1) {
        self.deviceState = deviceState
        self.dataFD = dataFD
    }
    public func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.appendLE(deviceState)
        b.appendLE(dataFD)
        return b
    }
    public static func decode(_ b: [UInt8]) -> Self? {
        guard b.count >= size else { return nil }
        return Self(deviceState: b.loadLE(at: 0, as: UInt32.self),
                    dataFD: b.loadLE(at: 4, as: Int32.self))
    }
}

/// `struct vfio_device_feature_mig_data_size { __aligned_u64 stop_copy_length; }` (8 bytes).
public struct VFIODeviceFeatureMigDataSize: Sendable, Equatable {
    public static let size = 8
    public var stopCopyLength: UInt64
    public init(stopCopyLength: UInt64) { self.stopCopyLength = stopCopyLength }
    public func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.appendLE(stopCopyLength)
        return b
    }
    public static func decode(_ b: [UInt8]) -> Self? {
        guard b.count >= size else { return nil }
        return Self(stopCopyLength: b.loadLE(at: 0, as: UInt64.self))
    }
}

/// `struct vfio_precopy_info { __u32 argsz; __u32 flags; __aligned_u64 initial_bytes;
/// __aligned_u64 dirty_bytes; }` (24 bytes).
public struct VFIOPrecopyInfo: Sendable, Equatable {
    public static let size = 24
    public var argsz: UInt32
    public var flags: UInt32
    public var initialBytes: UInt64
    public var dirtyBytes: UInt64
    public init(argsz: UInt32 = UInt32(VFIOPrecopyInfo.size), flags: UInt32 = 0,
                initialBytes: UInt64 = 0, dirtyBytes: UInt64 = 0) {
        self.argsz = argsz
        self.flags = flags
        self.initialBytes = initialBytes
        self.dirtyBytes = dirtyBytes
    }
    public func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(Self.size)
        b.appendLE(argsz)
        b.appendLE(flags)
        b.appendLE(initialBytes)
        b.appendLE(dirtyBytes)
        return b
    }
    public static func decode(_ b: [UInt8]) -> Self? {
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

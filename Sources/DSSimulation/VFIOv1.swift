// A model of VFIO migration v1, the original region-based protocol (Linux v5.8,
// `struct vfio_device_migration_info` in `include/uapi/linux/vfio.h`; superseded in v5.18 by the
// v2 `data_fd` protocol, the header keeping it as `..._DEPRECATED` / `VFIO_DEVICE_STATE_V1_*`).
//
// In v1, the device state is a bit field of RUNNING, SAVING and RESUMING written to the first
// field of a migration region; data is moved through a data section of the same region, by
// reading `pending_bytes`, `data_offset` and `data_size` in that order.

import DSSupport

/// `device_state` of `struct vfio_device_migration_info` (v1).
public struct VFIOv1DeviceState: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `VFIO_DEVICE_STATE_V1_RUNNING` (`1 << 0`).
    public static let running = VFIOv1DeviceState(rawValue: 1 << 0)
    /// `VFIO_DEVICE_STATE_V1_SAVING` (`1 << 1`).
    public static let saving = VFIOv1DeviceState(rawValue: 1 << 1)
    /// `VFIO_DEVICE_STATE_V1_RESUMING` (`1 << 2`).
    public static let resuming = VFIOv1DeviceState(rawValue: 1 << 2)
    /// `VFIO_DEVICE_STATE_MASK` (`RUNNING | SAVING | RESUMING` = 0x7).
    public static let mask: UInt32 = 0x7

    /// `_STOP` (0): the device is stopped.
    public static let stop: VFIOv1DeviceState = []
    /// `_SAVING` alone (2): stop-and-copy.
    public static let stopAndCopy: VFIOv1DeviceState = [.saving]
    /// `_RUNNING | _SAVING` (3): pre-copy.
    public static let preCopy: VFIOv1DeviceState = [.running, .saving]

    /// `VFIO_DEVICE_STATE_VALID(state)`:
    /// `(state & RESUMING ? (state & MASK) == RESUMING : 1)`.
    public var isValid: Bool {
        (rawValue & Self.resuming.rawValue) != 0
            ? (rawValue & Self.mask) == Self.resuming.rawValue
            : true
    }

    /// `VFIO_DEVICE_STATE_IS_ERROR(state)`: `(state & MASK) == (SAVING | RESUMING)`.
    public var isError: Bool {
        (rawValue & Self.mask) == (Self.saving.rawValue | Self.resuming.rawValue)
    }

    /// `VFIO_DEVICE_STATE_SET_ERROR(state)`: `(state & ~MASK) | SAVING | RESUMING`.
    public var settingError: VFIOv1DeviceState {
        VFIOv1DeviceState(rawValue: (rawValue & ~Self.mask) | Self.saving.rawValue | Self.resuming.rawValue)
    }

    public var description: String {
        switch rawValue & Self.mask {
        case 0: "STOP"
        case 1: "RUNNING"
        case 2: "STOP_AND_COPY"
        case 3: "PRE_COPY"
        case 4: "RESUMING"
        case 6: "ERROR"
        default: "INVALID(\(Hex.code(rawValue)))"
        }
    }
}

/// The header of a v1 migration region, `struct vfio_device_migration_info`:
///
/// ```c
/// struct vfio_device_migration_info {
///     __u32 device_state;   /* offset 0 */
///     __u32 reserved;       /* offset 4 */
///     __u64 pending_bytes;  /* offset 8 */
///     __u64 data_offset;    /* offset 16 */
///     __u64 data_size;      /* offset 24 */
/// };                        /* 32 bytes */
/// ```
public struct VFIOv1MigrationRegion: Sendable, Equatable {
    public static let deviceStateOffset = 0
    public static let pendingBytesOffset = 8
    public static let dataOffsetOffset = 16
    public static let dataSizeOffset = 24
    /// `sizeof(struct vfio_device_migration_info)`.
    public static let headerSize = 32

    public var deviceState: VFIOv1DeviceState
    public var pendingBytes: UInt64
    public var dataOffset: UInt64
    public var dataSize: UInt64

    public init(deviceState: VFIOv1DeviceState = .running, pendingBytes: UInt64 = 0,
                dataOffset: UInt64 = 0, dataSize: UInt64 = 0) {
        self.deviceState = deviceState
        self.pendingBytes = pendingBytes
        self.dataOffset = dataOffset
        self.dataSize = dataSize
    }

    /// The 32 header bytes, little-endian (the host order of the x86-64 and arm64 hosts VFIO runs on).
    public func encoded() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.headerSize)
        b.withUnsafeMutableBytes { raw in
            raw.storeLE(deviceState.rawValue, at: Self.deviceStateOffset)
            raw.storeLE(pendingBytes, at: Self.pendingBytesOffset)
            raw.storeLE(dataOffset, at: Self.dataOffsetOffset)
            raw.storeLE(dataSize, at: Self.dataSizeOffset)
        }
        return b
    }

    /// Decodes a header; nil when fewer than 32 bytes are given.
    public static func decode(_ b: [UInt8]) -> VFIOv1MigrationRegion? {
        guard b.count >= headerSize else { return nil }
        return VFIOv1MigrationRegion(
            deviceState: VFIOv1DeviceState(rawValue: b.loadLE(at: deviceStateOffset, as: UInt32.self)),
            pendingBytes: b.loadLE(at: pendingBytesOffset, as: UInt64.self),
            dataOffset: b.loadLE(at: dataOffsetOffset, as: UInt64.self),
            dataSize: b.loadLE(at: dataSizeOffset, as: UInt64.self))
    }
}

/// A simulated v1 device with a migration region: a source that produces its state through the
/// data section, or a destination that takes it back.
///
/// The protocol (from the v1 documentation in `include/uapi/linux/vfio.h`):
/// - source: set `_SAVING` (with `_RUNNING` for pre-copy); then loop: read `pending_bytes`;
///   if it is 0, the iteration (or, in stop-and-copy, the whole state) is done; otherwise read
///   `data_offset` (which tells the vendor driver to prepare data), then `data_size`, then read
///   `data_size` bytes at `data_offset` in the region;
/// - destination: set `_RESUMING`; then loop: read `data_offset`, write the data at that offset,
///   write its size to `data_size` (which tells the vendor driver to load it).
public final class VFIOv1SimulatedDevice: @unchecked Sendable {
    public enum Failure: Error, Equatable, Sendable {
        /// The state written is not `VFIO_DEVICE_STATE_VALID`, or not allowed now.
        case invalidState(VFIOv1DeviceState)
        /// A register was accessed out of protocol order or in the wrong state.
        case protocolViolation(String)
    }

    /// Offset of the data section in the region (after the 32-byte header, page-aligned in real
    /// drivers; any value past the header is legal).
    public static let dataSectionOffset: UInt64 = 4096
    /// The most bytes a single data section window holds.
    public let windowSize: Int

    public private(set) var region = VFIOv1MigrationRegion()
    /// The device's state (source) or what was loaded (destination).
    public private(set) var state: [UInt8]
    private var readPosition = 0
    private var offsetWasRead = false
    private var window: [UInt8] = []

    /// - Parameters:
    ///   - state: the opaque device state a source produces (empty for a destination).
    ///   - windowSize: the data section's size, so big states take several iterations.
    public init(state: [UInt8] = [], windowSize: Int = 64) {
        precondition(windowSize > 0)
        self.state = state
        self.windowSize = windowSize
    }

    /// Writes `device_state`.
    public func writeDeviceState(_ new: VFIOv1DeviceState) throws(Failure) {
        guard new.isValid, !new.isError else { throw .invalidState(new) }
        let old = region.deviceState
        if new.contains(.saving) && !old.contains(.saving) { readPosition = 0 }
        if new.contains(.resuming) && !old.contains(.resuming) { state = [] }
        if !new.contains(.resuming) && old.contains(.resuming) && offsetWasRead {
            throw .protocolViolation("left RESUMING with a data_offset read and no data_size written")
        }
        region.deviceState = new
        offsetWasRead = false
        region.pendingBytes = new.contains(.saving) ? UInt64(state.count - readPosition) : 0
    }

    /// Reads `pending_bytes`: the bytes still to be saved (source, `_SAVING` set).
    public func readPendingBytes() throws(Failure) -> UInt64 {
        guard region.deviceState.contains(.saving) else {
            throw .protocolViolation("pending_bytes read without _SAVING")
        }
        region.pendingBytes = UInt64(state.count - readPosition)
        return region.pendingBytes
    }

    /// Reads `data_offset`. On a source this prepares the next window (so it must follow a
    /// nonzero `pending_bytes`); on a destination it says where to write.
    public func readDataOffset() throws(Failure) -> UInt64 {
        if region.deviceState.contains(.saving) {
            guard region.pendingBytes > 0 else {
                throw .protocolViolation("data_offset read with pending_bytes 0")
            }
            let n = min(windowSize, state.count - readPosition)
            window = Array(state[readPosition..<(readPosition + n)])
            region.dataSize = UInt64(n)
        } else if region.deviceState == [.resuming] {
            window = []
        } else {
            throw .protocolViolation("data_offset read outside _SAVING and _RESUMING")
        }
        offsetWasRead = true
        region.dataOffset = Self.dataSectionOffset
        return region.dataOffset
    }

    /// Reads `data_size` (source): the bytes now in the data section; the data counts as saved.
    public func readDataSize() throws(Failure) -> UInt64 {
        guard region.deviceState.contains(.saving), offsetWasRead else {
            throw .protocolViolation("data_size read before data_offset")
        }
        offsetWasRead = false
        readPosition += Int(region.dataSize)
        return region.dataSize
    }

    /// Reads `count` bytes of the data section at region offset `offset` (source).
    public func readData(at offset: UInt64, count: Int) throws(Failure) -> [UInt8] {
        let start = Int(offset) - Int(Self.dataSectionOffset)
        guard region.deviceState.contains(.saving), start >= 0, start + count <= window.count else {
            throw .protocolViolation("data read outside the data section window")
        }
        return Array(window[start..<(start + count)])
    }

    /// Writes data into the data section at region offset `offset` (destination).
    public func writeData(_ bytes: [UInt8], at offset: UInt64) throws(Failure) {
        let start = Int(offset) - Int(Self.dataSectionOffset)
        guard region.deviceState == [.resuming], offsetWasRead, start >= 0,
              start + bytes.count <= windowSize else {
            throw .protocolViolation("data written outside RESUMING or outside the data section")
        }
        if window.count < start + bytes.count {
            window += [UInt8](repeating: 0, count: start + bytes.count - window.count)
        }
        window.replaceSubrange(start..<(start + bytes.count), with: bytes)
    }

    /// Writes `data_size` (destination): the driver loads that many bytes of the data section.
    public func writeDataSize(_ size: UInt64) throws(Failure) {
        guard region.deviceState == [.resuming], offsetWasRead, Int(size) <= window.count else {
            throw .protocolViolation("data_size written out of order or larger than the data written")
        }
        state += window[0..<Int(size)]
        region.dataSize = size
        offsetWasRead = false
    }

    /// Runs the source side of the v1 read protocol until `pending_bytes` is 0, returning the bytes.
    /// Call after setting a `_SAVING` state.
    public func drain() throws(Failure) -> [UInt8] {
        var out: [UInt8] = []
        while try readPendingBytes() > 0 {
            let offset = try readDataOffset()
            let size = try readDataSize()
            out += try readData(at: offset, count: Int(size))
        }
        return out
    }

    /// Runs the destination side: loads `bytes` in windows. Call in `_RESUMING`.
    public func load(_ bytes: [UInt8]) throws(Failure) {
        var pos = 0
        while pos < bytes.count {
            let n = min(windowSize, bytes.count - pos)
            let offset = try readDataOffset()
            try writeData(Array(bytes[pos..<(pos + n)]), at: offset)
            try writeDataSize(UInt64(n))
            pos += n
        }
    }
}

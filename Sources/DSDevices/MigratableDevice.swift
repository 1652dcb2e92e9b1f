/// The device protocol: what the migration engine needs from a device that migrates.
///
/// It mirrors the Linux VFIO v2 migration UAPI (`include/uapi/linux/vfio.h`): a control plane
/// (supported flags, the device state, pre-copy info, the stop-copy size, a config blob) and a data
/// plane of one of two kinds:
/// - addressable state (`AddressableDevice`): an fd read and written at offsets, plus a per-chunk
///   dirty bitmap the source reads and clears;
/// - an ordered stream (`StreamDevice`): opaque bytes read from, and written to, the device strictly
///   in order, as with VFIO's `data_fd`.

/// What kind of data plane a device has.
public enum DeviceDataKind: Sendable, Equatable {
    /// State that can be read and written at any offset (device memory, an image file).
    case addressable(size: UInt64)
    /// Opaque bytes whose order must be kept (a VFIO `data_fd`).
    case orderedStream
}

/// `struct vfio_precopy_info`: what is left to read in PRE_COPY.
public struct PrecopyInfo: Sendable, Equatable {
    /// Bytes of the initial state not read yet.
    public var initialBytes: UInt64
    /// Bytes that changed since they were read, as far as the device knows.
    public var dirtyBytes: UInt64
    public init(initialBytes: UInt64, dirtyBytes: UInt64) {
        self.initialBytes = initialBytes
        self.dirtyBytes = dirtyBytes
    }
}

/// An error from a device: a code and a message a user can act on.
public struct DeviceError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable {
        /// The operation is not allowed in the device's current state.
        case invalidState
        /// The state machine does not allow the requested transition.
        case blockedTransition
        /// A syscall or ioctl failed.
        case io
        /// A RESUMING device was given a stream that is wrong or incomplete.
        case malformedStream
        /// The device does not support what was asked.
        case unsupported
        /// A device spec string could not be parsed.
        case badSpec
    }
    public var code: Code
    public var message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

/// Which way the data plane is used.
public enum DeviceAccess: Sendable {
    /// Reading migration data: allowed in the saving states (PRE_COPY, PRE_COPY_P2P, STOP_COPY).
    case save
    /// Writing migration data: allowed in RESUMING only.
    case load
}

/// The control plane every migratable device has.
public protocol MigratableDevice: AnyObject, Sendable {
    /// The spec string the device was made from (`sim:size=1G`, `vfio-emu:...`, `file:PATH`, `vfio:PATH`).
    var spec: String { get }
    /// The data plane's kind.
    var dataKind: DeviceDataKind { get }
    /// `VFIO_DEVICE_FEATURE_MIGRATION`: the migration flags the device supports.
    var migrationFlags: VFIOMigrationFlags { get }
    /// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` (get).
    var state: VFIODeviceState { get }
    /// Moves the device to `target` by walking `VFIOStateMachine.path`, one arc at a time.
    /// - Throws: `.blockedTransition` when the state machine has no path.
    func setState(_ target: VFIODeviceState) throws(DeviceError)
    /// `VFIO_MIG_GET_PRECOPY_INFO`; valid in PRE_COPY and PRE_COPY_P2P only (`.invalidState` otherwise).
    func precopyInfo() throws(DeviceError) -> PrecopyInfo
    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`: the estimated bytes STOP_COPY will still produce.
    func stopCopySize() throws(DeviceError) -> UInt64
    /// The device's config state (small; sent once, in stop-copy).
    func saveConfig() throws(DeviceError) -> [UInt8]
    /// Loads a config state on the destination; RESUMING only.
    func loadConfig(_ bytes: [UInt8]) throws(DeviceError)
    /// An XXH3-64 digest of the device's whole state, to prove destination == source.
    func digest() throws(DeviceError) -> UInt64
    /// Releases what the device holds (workload threads, fds). Idempotent.
    func close()
}

/// What a device says its switchover transitions cost (a driver's figure, or an emulation's).
public struct SwitchoverCostEstimate: Sendable, Equatable {
    /// RUNNING (or PRE_COPY) → STOP_COPY on the source: quiescing the device.
    public var stop: Duration
    /// RESUMING → STOP → RUNNING on the destination, config load included.
    public var resume: Duration
    public init(stop: Duration, resume: Duration) { self.stop = stop; self.resume = resume }
}

extension MigratableDevice {
    /// The device's own estimate of its switchover costs; nil when it has none (the engine
    /// then uses what it can measure, and reports the real costs afterwards).
    public var switchoverCostEstimate: SwitchoverCostEstimate? { nil }
}

/// A device whose state is addressable: an fd read and written at offsets.
public protocol AddressableDevice: MigratableDevice {
    /// Size of the state in bytes.
    var size: UInt64 { get }
    /// Dirty-tracking granularity in bytes (a power of two).
    var trackingChunkSize: Int { get }
    /// The fd to `pread`/`pwrite` (or io_uring READ/WRITE) the state at offsets.
    /// - Throws: `.invalidState` when `access` is `.save` outside the saving states or `.load`
    ///   outside RESUMING.
    func dataFD(for access: DeviceAccess) throws(DeviceError) -> Int32
    /// Appends the indices of dirty tracking chunks to `chunks` and clears their bits atomically.
    /// The first call after entering PRE_COPY (or STOP_COPY directly) reports every chunk.
    /// A chunk written after its bit was cleared is reported again by a later call.
    func takeDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError)
    /// Appends the indices `takeDirtyChunks` would return now, without clearing anything (for
    /// exact `pending` estimates).
    func peekDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError)
    /// Bytes currently dirty (not yet taken), for `pending` estimates.
    func dirtyByteCount() -> UInt64
}

/// A device whose state is an opaque, ordered stream (VFIO v2 `data_fd`).
public protocol StreamDevice: MigratableDevice {
    /// Reads migration data (`read(data_fd)`): returns the count read, 0 for "no data now" in
    /// PRE_COPY (temporary end of data) or end of stream in STOP_COPY.
    /// - Throws: `.invalidState` outside the saving states.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(DeviceError) -> Int
    /// Writes migration data in order (`write(data_fd)`); RESUMING only.
    /// - Throws: `.invalidState` outside RESUMING, `.malformedStream` when the bytes are wrong.
    func write(_ bytes: UnsafeRawBufferPointer) throws(DeviceError)
}

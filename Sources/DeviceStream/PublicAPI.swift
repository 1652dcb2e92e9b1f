import DSTransport
import DSScheduler
import DSDevices
import DSRing
import DSSupport

// The embedding API: what `import DeviceStream` shows. The sessions, their configuration,
// events, statistics and reports are declared in this module; the names below come from the
// layers underneath, which stay out of the embedder's namespace (nothing is re-exported; the rest of
// each layer is `package`). `APICanaryTests` compiles a client against exactly this surface.

// Configuration.
/// The data path: connections, compression, chunk size, stall timeout, backend, security.
public typealias TransferOptions = DSTransport.TransferOptions
/// Where a destination listens or a source connects (`HOST:PORT`).
public typealias Endpoint = DSTransport.Endpoint
/// TLS 1.3 with a shared key (`pskFile`, `makeKeyFile`, `randomKey`) or mutual x509 certificates.
public typealias SecurityOptions = DSTransport.SecurityOptions
/// Which protection a session had (every report says it): TLS with a key, with certificates, or none.
public typealias SessionProtection = DSTransport.SessionProtection
/// The pre-copy scheduler's settings: downtime limit, bandwidth cap, policy, deadline, who
/// switches over.
public typealias SchedulerConfiguration = DSScheduler.SchedulerConfiguration
/// What to do when pre-copy does not converge.
public typealias NonConvergencePolicy = DSScheduler.NonConvergencePolicy
/// Who decides when to switch over: the scheduler, or the caller (`switchover()`).
public typealias SwitchoverControl = DSScheduler.SwitchoverControl
/// Why a migration switched over.
public typealias SwitchoverReason = DSScheduler.SwitchoverReason
/// io_uring or plain blocking syscalls (for hosts whose seccomp filter forbids io_uring).
public typealias IOBackendKind = DSRing.IOBackendKind

// Errors.
/// Every session error: a `code`, a `message` for a person, an optional `hint` and the `cause`
/// underneath (a `DeviceError` for device failures).
public typealias MigrationError = DSTransport.TransferError

// Devices.
/// A device whose state migrates: the VFIO migration state machine, pre-copy info, config.
public typealias MigratableDevice = DSDevices.MigratableDevice
/// A device whose state is an fd read and written at offsets, with a dirty bitmap.
public typealias AddressableDevice = DSDevices.AddressableDevice
/// A device whose state is an ordered stream (the VFIO v2 `data_fd`).
public typealias StreamDevice = DSDevices.StreamDevice
public typealias DeviceError = DSDevices.DeviceError
public typealias DeviceDataKind = DSDevices.DeviceDataKind
public typealias DeviceAccess = DSDevices.DeviceAccess
public typealias PrecopyInfo = DSDevices.PrecopyInfo
public typealias SwitchoverCostEstimate = DSDevices.SwitchoverCostEstimate
public typealias VFIODeviceState = DSDevices.VFIODeviceState
public typealias VFIOMigrationFlags = DSDevices.VFIOMigrationFlags
/// A real VFIO device through the Linux VFIO v2 migration UAPI.
public typealias VFIODevice = DSDevices.VFIODevice
/// A plain file or block device as migration state.
public typealias FileDevice = DSDevices.FileDevice
/// Whether a device made from the VMM's fd closes it (`.owned`) or leaves it (`.borrowed`).
public typealias FDOwnership = DSSupport.FDOwnership

extension MigrationError {
    /// The device error underneath, when a device failed (its `code` says how).
    public var deviceError: DeviceError? { cause as? DeviceError }
}

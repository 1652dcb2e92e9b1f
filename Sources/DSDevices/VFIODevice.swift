import Glibc
import DSSupport

/// A real VFIO device, migrated through the VFIO v2 migration UAPI (Linux 5.18+, PRE_COPY 6.2+):
/// `VFIO_DEVICE_FEATURE` for the migration flags, the device state and the stop-copy size, the
/// `data_fd` returned by a state change for the data, `VFIO_MIG_GET_PRECOPY_INFO` on that fd.
///
/// It is made from either
/// - the path of a VFIO device cdev, `/dev/vfio/devices/vfioN` (iommufd);
/// - `GROUPPATH@DEVICENAME`, e.g. `/dev/vfio/26@0000:06:0d.0`: the group is opened and
///   `VFIO_GROUP_GET_DEVICE_FD` is asked for the named device; or
/// - a device fd the VMM already holds (`init(fd:ownership:name:)`): the one it uses for the
///   guest, perhaps received over `SCM_RIGHTS` as Cloud Hypervisor receives them.
///
/// Binding the device to an IOMMU (`VFIO_DEVICE_BIND_IOMMUFD` on a cdev, a container on a group)
/// is the VMM's business and is not done here: this type expects a device the caller can already
/// use, and reports the kernel's error (often EINVAL) with the path otherwise.
///
/// ## Who drives the device state
///
/// While a migration session that holds this device runs, the library drives the device's VFIO
/// migration state (`VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`) through this fd, along
/// `VFIOStateMachine`'s arcs, and reads or writes the `data_fd` the kernel returns. The VMM must
/// not change the migration state, nor read or write the migration data, until the session
/// returns its report (completed or failed). Afterwards the device is where the report says: a
/// completed source is in STOP, a completed destination in RUNNING (or in STOP while its resume
/// is held); a failed source is back in RUNNING, a failed destination is not running. `state`
/// (or `refreshState()`) reads it. Everything else about the device (its regions, interrupts,
/// DMA mappings, reset) stays the VMM's, through its own fd.
///
/// ## Who closes what
///
/// The `data_fd`s are the library's: it closes each when the device leaves the state that gave
/// it, and at `close()`. A device (and group) fd the library opened from a path is closed by
/// `close()`; a VMM's fd only with `.owned` (`FDOwnership`), never when `.borrowed`.
///
/// The state is opaque bytes read from and written to `data_fd` in order, so this is a
/// `StreamDevice`. No real VFIO device exists on the machine this was written on: all the logic is
/// tested against a fake kernel (`FakeVFIOKernel` in the tests) under `VFIOIoctlLayer`.
public final class VFIODevice: StreamDevice {
    /// The fds the device holds, guarded by `core`'s lock.
    struct FDs: Sendable {
        var deviceFD: Int32
        var groupFD: Int32
        var dataFD: Int32 = -1
    }

    public let spec: String
    /// The path the device was opened from (`/dev/vfio/devices/vfioN` or `GROUP@NAME`), or, for a
    /// device made from an fd, the name it was given (`fd N` by default).
    public let path: String
    /// Whether `close()` closes the device fd: `.owned` for a device opened from a path.
    public let ownership: FDOwnership
    public var migrationFlags: VFIOMigrationFlags { core.flags }
    public var dataKind: DeviceDataKind { .orderedStream }
    private let layer: VFIOIoctlLayer
    private let core: DeviceCore<FDs>

    /// Opens the device and probes its migration support.
    /// - Throws: `.badSpec` for an empty path or device name, `.io` when the device cannot be
    ///   opened, `.unsupported` when the device has no VFIO migration (or no STOP_COPY).
    public convenience init(path: String) throws(DeviceError) {
        try self.init(path: path, layer: SystemIoctlLayer())
    }

    /// `init(path:)` over an ioctl layer of the caller's (tests use a fake kernel).
    package init(path: String, layer: VFIOIoctlLayer) throws(DeviceError) {
        self.path = path
        self.spec = "vfio:" + path
        self.layer = layer
        ownership = .owned
        guard !path.isEmpty else {
            throw DeviceError(.badSpec, "vfio: empty device path; give /dev/vfio/devices/vfioN or GROUPPATH@DEVICENAME")
        }

        var deviceFD: Int32
        var groupFD: Int32 = -1
        if let at = path.firstIndex(of: "@") {
            let groupPath = String(path[..<at])
            let name = String(path[path.index(after: at)...])
            guard !groupPath.isEmpty, !name.isEmpty else {
                throw DeviceError(.badSpec, "vfio:\(path): expected GROUPPATH@DEVICENAME, e.g. /dev/vfio/26@0000:06:0d.0")
            }
            groupFD = layer.open(groupPath)
            guard groupFD >= 0 else {
                throw DeviceError(.io, "vfio:\(path): cannot open VFIO group \(groupPath): \(Errno(rawValue: -groupFD)); check that the device is bound to vfio-pci (or a variant driver) and that you may open the group")
            }
            var cName = Array(name.utf8CString)
            deviceFD = cName.withUnsafeMutableBytes { layer.ioctl(groupFD, VFIOUAPI.groupGetDeviceFD, $0.baseAddress!) }
            guard deviceFD >= 0 else {
                layer.close(groupFD)
                throw DeviceError(.io, "vfio:\(path): VFIO_GROUP_GET_DEVICE_FD for \(name) failed: \(Errno(rawValue: -deviceFD)); check the device name (ls /sys/kernel/iommu_groups/*/devices) and that the group has an IOMMU container set")
            }
        } else {
            deviceFD = layer.open(path)
            guard deviceFD >= 0 else {
                throw DeviceError(.io, "vfio:\(path): cannot open the VFIO device: \(Errno(rawValue: -deviceFD)); give an existing /dev/vfio/devices/vfioN you may open read-write")
            }
        }

        let (flags, state): (VFIOMigrationFlags, VFIODeviceState)
        do { (flags, state) = try Self.probeMigration(layer, deviceFD, path) } catch {
            layer.close(deviceFD)
            if groupFD >= 0 { layer.close(groupFD) }
            throw error
        }
        core = DeviceCore(name: "vfio:\(path)", flags: flags, state: state, inner: FDs(deviceFD: deviceFD, groupFD: groupFD))
    }

    /// Makes the device from a VFIO device fd the caller already holds (the VMM's own, e.g.
    /// received over `SCM_RIGHTS`), and probes its migration support through it.
    ///
    /// The library drives the device's migration state through `fd` while a session runs; see
    /// "Who drives the device state" above.
    /// - Parameters:
    ///   - fd: an open VFIO device fd (from `/dev/vfio/devices/vfioN` or
    ///     `VFIO_GROUP_GET_DEVICE_FD`), bound to an IOMMU by the caller.
    ///   - ownership: `.borrowed` (the default): the caller keeps `fd`, the library never closes
    ///     it, and the caller must keep it open until `close()` returns. `.owned`: `fd` is the
    ///     device's from this call on; `close()` closes it, and so does this initializer when it
    ///     throws.
    ///   - name: what reports and errors call the device (`spec` is `vfio:` + name); default
    ///     `fd N`.
    /// - Throws: `.badSpec` for a negative fd, `.io` when the fd is not a usable VFIO device,
    ///   `.unsupported` when the device has no VFIO migration (or no STOP_COPY).
    public convenience init(fd: Int32, ownership: FDOwnership = .borrowed, name: String? = nil) throws(DeviceError) {
        try self.init(fd: fd, ownership: ownership, name: name, layer: SystemIoctlLayer())
    }

    /// `init(fd:ownership:name:)` over an ioctl layer of the caller's (tests use a fake kernel).
    package init(fd: Int32, ownership: FDOwnership = .borrowed, name: String? = nil, layer: VFIOIoctlLayer) throws(DeviceError) {
        let label = name ?? "fd \(fd)"
        path = label
        spec = "vfio:" + label
        self.layer = layer
        self.ownership = ownership
        guard fd >= 0 else {
            throw DeviceError(.badSpec, "vfio:\(label): \(fd) is not a file descriptor; pass the VFIO device fd the VMM holds")
        }
        let (flags, state): (VFIOMigrationFlags, VFIODeviceState)
        do { (flags, state) = try Self.probeMigration(layer, fd, label) } catch {
            if ownership == .owned { layer.close(fd) }
            throw error
        }
        core = DeviceCore(name: "vfio:\(label)", flags: flags, state: state, inner: FDs(deviceFD: fd, groupFD: -1))
    }

    /// `VFIO_DEVICE_FEATURE_MIGRATION` and `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` (GET) on a
    /// device fd: its migration flags and current state. Closes nothing.
    private static func probeMigration(_ layer: VFIOIoctlLayer, _ deviceFD: Int32,
                                       _ path: String) throws(DeviceError) -> (VFIOMigrationFlags, VFIODeviceState) {
        // VFIO_DEVICE_FEATURE_MIGRATION, GET.
        var payload = [UInt8](repeating: 0, count: VFIODeviceFeatureMigration.size)
        let r = Self.feature(layer, deviceFD, VFIOUAPI.featureGet | VFIOUAPI.featureMigration, &payload)
        if r < 0 {
            if r == -ENOTTY {
                throw DeviceError(.unsupported, "vfio:\(path): the device does not support VFIO migration (VFIO_DEVICE_FEATURE_MIGRATION: ENOTTY); bind it to a migration-capable variant driver such as mlx5_vfio_pci")
            }
            throw DeviceError(.io, "vfio:\(path): VFIO_DEVICE_FEATURE_MIGRATION (GET) failed: \(Errno(rawValue: -r)); check that the device is bound to an IOMMU (iommufd or a container)")
        }
        let flags = VFIODeviceFeatureMigration.decode(payload)!.flags
        guard flags.contains(.stopCopy) else {
            throw DeviceError(.unsupported, "vfio:\(path): the device's migration flags \(flags) lack VFIO_MIGRATION_STOP_COPY, which every migratable device must have")
        }

        // VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, GET.
        var mig = VFIODeviceFeatureMigState(deviceState: 0).encoded()
        let g = Self.feature(layer, deviceFD, VFIOUAPI.featureGet | VFIOUAPI.featureMigDeviceState, &mig)
        guard g >= 0 else {
            throw DeviceError(.io, "vfio:\(path): VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (GET) failed: \(Errno(rawValue: -g))")
        }
        let raw = VFIODeviceFeatureMigState.decode(mig)!.deviceState
        guard let state = VFIODeviceState(rawValue: raw) else {
            throw DeviceError(.unsupported, "vfio:\(path): the kernel reports device state \(raw), which this program does not know; update it")
        }
        return (flags, state)
    }

    deinit {
        close()
    }

    /// Issues `VFIO_DEVICE_FEATURE` with `flags` and `payload` as `data[]`; the kernel's output
    /// (for GET) is copied back into `payload`. Returns the ioctl result (`-errno` on failure).
    private static func feature(_ layer: VFIOIoctlLayer, _ fd: Int32, _ flags: UInt32,
                                _ payload: inout [UInt8]) -> Int32 {
        var arg = VFIODeviceFeature(flags: flags, data: payload).encoded()
        let r = arg.withUnsafeMutableBytes { layer.ioctl(fd, VFIOUAPI.deviceFeature, $0.baseAddress!) }
        payload = Array(arg[VFIOUAPI.featureHeaderSize...])
        return r
    }

    /// `VFIO_DEVICE_FEATURE` with `VFIO_DEVICE_FEATURE_PROBE` for a feature index and GET/SET
    /// bits: true when the device supports it.
    package func probe(feature index: UInt32, ops: UInt32 = VFIOUAPI.featureGet) -> Bool {
        core.withLock { locked in
            guard !locked.isClosed else { return false }
            var empty: [UInt8] = []
            return Self.feature(layer, locked.inner.deviceFD, VFIOUAPI.featureProbe | ops | index, &empty) >= 0
        }
    }

    public var state: VFIODeviceState { core.state }

    /// Asks the kernel for the current state (`VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`, GET) and
    /// caches it; `state` is the cached value.
    public func refreshState() throws(DeviceError) -> VFIODeviceState {
        try core.withOpen { (locked) throws(DeviceError) -> VFIODeviceState in try queryState(&locked) }
    }

    private func queryState(_ locked: inout DeviceCore<FDs>.Locked) throws(DeviceError) -> VFIODeviceState {
        var mig = VFIODeviceFeatureMigState(deviceState: 0).encoded()
        let g = Self.feature(layer, locked.inner.deviceFD, VFIOUAPI.featureGet | VFIOUAPI.featureMigDeviceState, &mig)
        guard g >= 0 else {
            throw DeviceError(.io, "vfio:\(path): VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (GET) failed: \(Errno(rawValue: -g))")
        }
        let raw = VFIODeviceFeatureMigState.decode(mig)!.deviceState
        guard let s = VFIODeviceState(rawValue: raw) else {
            throw DeviceError(.unsupported, "vfio:\(path): the kernel reports device state \(raw), which this program does not know")
        }
        locked.state = s
        return s
    }

    private func closeDataFD(_ fds: inout FDs) {
        if fds.dataFD >= 0 {
            layer.close(fds.dataFD)
            fds.dataFD = -1
        }
    }

    /// Moves the device to `target` along `VFIOStateMachine.path`, one `SET` ioctl per arc (as
    /// QEMU does), keeping the `data_fd` the kernel returns on the arcs into PRE_COPY,
    /// PRE_COPY_P2P, STOP_COPY and RESUMING, and closing it when the device leaves those states.
    public func setState(_ target: VFIODeviceState) throws(DeviceError) {
        try core.transition(to: target) { (arc, locked) throws(DeviceError) in
            var mig = VFIODeviceFeatureMigState(deviceState: arc.to.rawValue, dataFD: -1).encoded()
            let r = Self.feature(layer, locked.inner.deviceFD, VFIOUAPI.featureSet | VFIOUAPI.featureMigDeviceState, &mig)
            if r < 0 {
                // The kernel may have left the device in ERROR, or where it was: ask.
                let now = (try? queryState(&locked)) ?? .error
                if now == .error { closeDataFD(&locked.inner) }
                let code: DeviceError.Code = (arc.from == .resuming && (r == -EINVAL || r == -EIO || r == -EPROTO))
                    ? .malformedStream : .io
                let what = code == .malformedStream
                    ? "the device rejected the migration data it was given (RESUMING -> \(arc.to))"
                    : "the transition \(arc.from) -> \(arc.to) failed"
                throw DeviceError(code, "vfio:\(path): \(what) on the way to \(target): VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (SET) returned \(Errno(rawValue: -r)); the device is now \(now)\(now == .error ? " and must be reset (VFIO_DEVICE_RESET) before reuse" : "")")
            }
            let out = VFIODeviceFeatureMigState.decode(mig)!
            if out.dataFD >= 0 {
                // A new data_fd replaces any old one (the old stream is over).
                closeDataFD(&locked.inner)
                locked.inner.dataFD = out.dataFD
            } else if !VFIOStateMachine.isSaving(arc.to) && arc.to != .resuming {
                closeDataFD(&locked.inner)
            }
        }
    }

    /// The `data_fd` of the current migration stream.
    /// - Throws: `.invalidState` when the kernel gave none for this state.
    private func dataFD(_ locked: DeviceCore<FDs>.Locked) throws(DeviceError) -> Int32 {
        guard locked.inner.dataFD >= 0 else {
            throw DeviceError(.invalidState, "vfio:\(path): the kernel returned no data_fd on the way to \(locked.state); move the device through STOP and try again")
        }
        return locked.inner.dataFD
    }

    public func precopyInfo() throws(DeviceError) -> PrecopyInfo {
        try core.withOpen(in: [.preCopy, .preCopyP2P], to: "ask VFIO_MIG_GET_PRECOPY_INFO") { (locked) throws(DeviceError) -> PrecopyInfo in
            let fd = try dataFD(locked)
            var info = VFIOPrecopyInfo().encoded()
            let r = info.withUnsafeMutableBytes { layer.ioctl(fd, VFIOUAPI.migGetPrecopyInfo, $0.baseAddress!) }
            if r == -ENOMSG {
                return PrecopyInfo(initialBytes: 0, dirtyBytes: 0)  // no data for now
            }
            guard r >= 0 else {
                throw DeviceError(.io, "vfio:\(path): VFIO_MIG_GET_PRECOPY_INFO on the data_fd failed in \(locked.state): \(Errno(rawValue: -r))")
            }
            let out = VFIOPrecopyInfo.decode(info)!
            return PrecopyInfo(initialBytes: out.initialBytes, dirtyBytes: out.dirtyBytes)
        }
    }

    public func stopCopySize() throws(DeviceError) -> UInt64 {
        try core.withOpen { (locked) throws(DeviceError) -> UInt64 in
            var payload = [UInt8](repeating: 0, count: VFIODeviceFeatureMigDataSize.size)
            let r = Self.feature(layer, locked.inner.deviceFD, VFIOUAPI.featureGet | VFIOUAPI.featureMigDataSize, &payload)
            if r == -ENOTTY {
                throw DeviceError(.unsupported, "vfio:\(path): the device does not report its stop-copy size (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: ENOTTY; the kernel needs Linux 6.2+ and driver support); estimate it otherwise")
            }
            guard r >= 0 else {
                throw DeviceError(.io, "vfio:\(path): VFIO_DEVICE_FEATURE_MIG_DATA_SIZE (GET) failed in \(locked.state): \(Errno(rawValue: -r))")
            }
            return VFIODeviceFeatureMigDataSize.decode(payload)!.stopCopyLength
        }
    }

    /// VFIO v2 has no config state separate from the data stream in the UAPI: the device's whole
    /// state goes through `data_fd`. (QEMU's "config" for a VFIO PCI device is its PCI config
    /// space, emulated by the VMM; that is out of scope here.) So this is always empty.
    public func saveConfig() throws(DeviceError) -> [UInt8] {
        try core.saveConfig { _ in [] }
    }

    /// Accepts the empty config `saveConfig` produces, in RESUMING only.
    public func loadConfig(_ bytes: [UInt8]) throws(DeviceError) {
        try core.withOpen(in: [.resuming], to: "load a config") { (_) throws(DeviceError) in
            guard bytes.isEmpty else {
                throw DeviceError(.malformedStream, "vfio:\(path): got \(bytes.count) bytes of config, but a VFIO device has none (its state is all in the data stream); the source was not a vfio: device")
            }
        }
    }

    /// A real VFIO device's state is opaque to userspace: it cannot be digested.
    public func digest() throws(DeviceError) -> UInt64 {
        throw DeviceError(.unsupported, "vfio:\(path): a real VFIO device cannot be digested: its state is opaque, readable only as a one-shot migration stream; verify the migration with the device's own tools instead")
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(DeviceError) -> Int {
        try core.withOpen(for: .save) { (locked) throws(DeviceError) -> Int in
            let fd = try dataFD(locked)
            if buffer.count == 0 { return 0 }
            let n = layer.read(fd, buffer)
            if n == -Int(ENOMSG) {
                return 0  // PRE_COPY: no data for now (a temporary end of stream)
            }
            guard n >= 0 else {
                throw DeviceError(.io, "vfio:\(path): read(data_fd) failed in \(locked.state): \(Errno(rawValue: Int32(-n)))")
            }
            return n
        }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(DeviceError) {
        try core.withOpen(for: .load) { (locked) throws(DeviceError) in
            let fd = try dataFD(locked)
            var done = 0
            while done < bytes.count {
                let rest = UnsafeRawBufferPointer(rebasing: bytes[done...])
                let n = layer.write(fd, rest)
                if n < 0 {
                    let e = Int32(-n)
                    let code: DeviceError.Code = (e == EINVAL || e == EPROTO) ? .malformedStream : .io
                    throw DeviceError(code, "vfio:\(path): write(data_fd) failed after \(done) of \(bytes.count) bytes: \(Errno(rawValue: e))\(code == .malformedStream ? "; the device rejected the stream: it is not this device's migration data" : "")")
                }
                if n == 0 {
                    throw DeviceError(.io, "vfio:\(path): write(data_fd) accepted no bytes after \(done) of \(bytes.count)")
                }
                done += n
            }
        }
    }

    public func close() {
        core.close { fds in
            closeDataFD(&fds)
            if fds.deviceFD >= 0 && ownership == .owned { layer.close(fds.deviceFD) }
            if fds.groupFD >= 0 { layer.close(fds.groupFD) }
            fds.deviceFD = -1
            fds.groupFD = -1
        }
    }
}

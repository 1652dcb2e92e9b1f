import Glibc
import Synchronization
import CDeviceStream
import DSSupport
import DSDevices

/// A device the VMM defines through a `ds_device_ops` table: the library's device protocols
/// over the C callbacks. The VFIO state machine is walked here, one arc per `set_state` call,
/// as the kernel does for a VFIO driver.
final class OpsDevice: @unchecked Sendable {
    // @unchecked: `ops` and `user` are immutable; `state` is guarded by `lock`, which also
    // serializes stream reads and writes and transitions (the header promises so).
    let ops: ds_device_ops
    let user: UnsafeMutableRawPointer?
    let spec: String
    let migrationFlags: VFIOMigrationFlags
    private let lock = ConditionLock()
    private var current: VFIODeviceState
    private var released = false

    init(ops: ds_device_ops, user: UnsafeMutableRawPointer?) throws(DeviceError) {
        self.ops = ops
        self.user = user
        let name = ops.name.map { String(cString: $0) } ?? "device"
        spec = "ops:" + name
        migrationFlags = VFIOMigrationFlags(rawValue: ops.migration_flags)
        guard migrationFlags.contains(.stopCopy) else {
            throw DeviceError(.unsupported, "\(spec): migration_flags lack DS_MIGRATION_STOP_COPY, which every migratable device needs")
        }
        guard let initial = VFIODeviceState(rawValue: ops.initial_state),
              initial == .running || initial == .resuming || initial == .stop else {
            throw DeviceError(.badSpec, "\(spec): initial_state \(ops.initial_state) is not DS_STATE_RUNNING, DS_STATE_STOP or DS_STATE_RESUMING")
        }
        current = initial
        guard ops.set_state != nil, ops.save_config != nil, ops.load_config != nil else {
            throw DeviceError(.badSpec, "\(spec): set_state, save_config and load_config are required")
        }
        if ops.kind == UInt32(DS_DEVICE_ADDRESSABLE) {
            guard ops.size > 0, ops.tracking_chunk > 0, ops.tracking_chunk & (ops.tracking_chunk - 1) == 0 else {
                throw DeviceError(.badSpec, "\(spec): an addressable device needs size > 0 and a power-of-two tracking_chunk")
            }
            guard ops.data_fd != nil, ops.dirty_bitmap != nil else {
                throw DeviceError(.badSpec, "\(spec): an addressable device needs data_fd and dirty_bitmap")
            }
        } else if ops.kind == UInt32(DS_DEVICE_STREAM) {
            guard ops.read != nil, ops.write != nil else { throw DeviceError(.badSpec, "\(spec): a stream device needs read and write") }
            guard !migrationFlags.contains(.preCopy) || ops.precopy_info != nil else {
                throw DeviceError(.badSpec, "\(spec): a pre-copy stream device needs precopy_info")
            }
        } else {
            throw DeviceError(.badSpec, "\(spec): kind \(ops.kind) is neither DS_DEVICE_ADDRESSABLE nor DS_DEVICE_STREAM")
        }
    }

    /// A callback's negative errno as a device error.
    func check(_ rc: Int64, _ what: String) throws(DeviceError) {
        guard rc < 0 else { return }
        throw DeviceError(rc == -Int64(EINVAL) ? .invalidState : .io, "\(spec): \(what) failed: \(Errno(rawValue: Int32(clamping: -rc)))")
    }

    var state: VFIODeviceState { lock.withLock { current } }

    func setState(_ target: VFIODeviceState) throws(DeviceError) {
        var failure: DeviceError?
        lock.withLock {
            guard let arcs = VFIOStateMachine.path(from: current, to: target, flags: migrationFlags) else {
                failure = DeviceError(.blockedTransition, "\(spec): no path from \(current) to \(target) with migration flags \(migrationFlags)")
                return
            }
            for next in arcs {
                let rc = ops.set_state!(user, current.rawValue, next.rawValue)
                if rc < 0 {
                    failure = DeviceError(.io, "\(spec): set_state \(current) -> \(next) failed: \(Errno(rawValue: -rc))")
                    return
                }
                current = next
            }
        }
        if let failure { throw failure }
    }

    func precopyInfo() throws(DeviceError) -> PrecopyInfo {
        guard VFIOStateMachine.isSaving(state), state != .stopCopy else {
            throw DeviceError(.invalidState, "\(spec): pre-copy info is only valid in PRE_COPY")
        }
        guard let f = ops.precopy_info else { return PrecopyInfo(initialBytes: 0, dirtyBytes: 0) }
        var initial: UInt64 = 0, dirty: UInt64 = 0
        try check(Int64(f(user, &initial, &dirty)), "precopy_info")
        return PrecopyInfo(initialBytes: initial, dirtyBytes: dirty)
    }

    func stopCopySize() throws(DeviceError) -> UInt64 {
        guard let f = ops.stop_copy_size else { return ops.kind == UInt32(DS_DEVICE_ADDRESSABLE) ? ops.size : 0 }
        var n: UInt64 = 0
        try check(Int64(f(user, &n)), "stop_copy_size")
        return n
    }

    func saveConfig() throws(DeviceError) -> [UInt8] {
        var capacity = 4096
        while true {
            var out = [UInt8](repeating: 0, count: capacity)
            let n = out.withUnsafeMutableBytes { ops.save_config!(user, $0.baseAddress, $0.count) }
            if n == -Int64(ENOSPC) && capacity < 1 << 20 { capacity *= 4; continue }
            try check(n, "save_config")
            guard n <= Int64(capacity) else { throw DeviceError(.io, "\(spec): save_config returned \(n) bytes for a \(capacity)-byte buffer") }
            return Array(out.prefix(Int(n)))
        }
    }

    func loadConfig(_ bytes: [UInt8]) throws(DeviceError) {
        let rc = bytes.withUnsafeBytes { ops.load_config!(user, $0.baseAddress, $0.count) }
        try check(Int64(rc), "load_config")
    }

    func digest() throws(DeviceError) -> UInt64 {
        guard let f = ops.digest else { throw DeviceError(.unsupported, "\(spec): no digest callback") }
        var d: UInt64 = 0
        try check(Int64(f(user, &d)), "digest")
        return d
    }

    func close() {
        let first = lock.withLock { () -> Bool in defer { released = true }; return !released }
        if first { ops.release?(user) }
    }
}

/// The protocol members both kinds of ops device answer from their `OpsDevice`.
protocol OpsBacked: MigratableDevice {
    var base: OpsDevice { get }
}

extension OpsBacked {
    var spec: String { base.spec }
    var migrationFlags: VFIOMigrationFlags { base.migrationFlags }
    var state: VFIODeviceState { base.state }
    func setState(_ target: VFIODeviceState) throws(DeviceError) { try base.setState(target) }
    func stopCopySize() throws(DeviceError) -> UInt64 { try base.stopCopySize() }
    func saveConfig() throws(DeviceError) -> [UInt8] { try base.saveConfig() }
    func loadConfig(_ bytes: [UInt8]) throws(DeviceError) { try base.loadConfig(bytes) }
    func digest() throws(DeviceError) -> UInt64 { try base.digest() }
    func close() { base.close() }
}

/// An addressable ops device: an fd at offsets and a dirty bitmap.
final class OpsAddressableDevice: AddressableDevice, OpsBacked, @unchecked Sendable {
    // @unchecked: see OpsDevice; the bitmap scratch is guarded by `bitmapLock`.
    let base: OpsDevice
    private let bitmapLock = Mutex<[UInt64]>([])
    init(_ base: OpsDevice) { self.base = base }

    var dataKind: DeviceDataKind { .addressable(size: base.ops.size) }
    var size: UInt64 { base.ops.size }
    var trackingChunkSize: Int { Int(base.ops.tracking_chunk) }
    func precopyInfo() throws(DeviceError) -> PrecopyInfo {
        guard base.ops.precopy_info != nil else { return PrecopyInfo(initialBytes: 0, dirtyBytes: dirtyByteCount()) }
        return try base.precopyInfo()
    }

    func dataFD(for access: DeviceAccess) throws(DeviceError) -> Int32 {
        let fd = base.ops.data_fd!(base.user, access == .load ? 1 : 0)
        try base.check(Int64(fd), "data_fd")
        return fd
    }

    private func chunks(clear: Bool, into out: inout [UInt64]) throws(DeviceError) {
        let count = (size + base.ops.tracking_chunk - 1) / base.ops.tracking_chunk
        let words = Int((count + 63) / 64)
        var failure: DeviceError?
        bitmapLock.withLock { bitmap in
            if bitmap.count != words { bitmap = [UInt64](repeating: 0, count: words) }
            for i in bitmap.indices { bitmap[i] = 0 }
            let rc = bitmap.withUnsafeMutableBufferPointer { base.ops.dirty_bitmap!(base.user, $0.baseAddress, words, clear ? 1 : 0) }
            if rc < 0 { failure = DeviceError(.io, "\(spec): dirty_bitmap failed: \(Errno(rawValue: -rc))"); return }
            for (w, word) in bitmap.enumerated() where word != 0 {
                var bits = word
                while bits != 0 {
                    let i = UInt64(w * 64 + bits.trailingZeroBitCount)
                    if i < count { out.append(i) }
                    bits &= bits - 1
                }
            }
        }
        if let failure { throw failure }
    }

    func takeDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) { try self.chunks(clear: true, into: &chunks) }
    func peekDirtyChunks(into chunks: inout [UInt64]) throws(DeviceError) { try self.chunks(clear: false, into: &chunks) }
    func dirtyByteCount() -> UInt64 {
        var c: [UInt64] = []
        try? chunks(clear: false, into: &c)
        return min(UInt64(c.count) * base.ops.tracking_chunk, size)
    }
}

/// A stream ops device: ordered reads and writes.
final class OpsStreamDevice: StreamDevice, OpsBacked, @unchecked Sendable {
    // @unchecked: see OpsDevice (the session serializes reads and writes of a stream device).
    let base: OpsDevice
    init(_ base: OpsDevice) { self.base = base }

    var dataKind: DeviceDataKind { .orderedStream }
    func precopyInfo() throws(DeviceError) -> PrecopyInfo { try base.precopyInfo() }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(DeviceError) -> Int {
        let n = base.ops.read!(base.user, buffer.baseAddress, buffer.count)
        try base.check(n, "read")
        guard n <= Int64(buffer.count) else { throw DeviceError(.io, "\(spec): read returned \(n) bytes for a \(buffer.count)-byte buffer") }
        return Int(n)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(DeviceError) {
        let rc = base.ops.write!(base.user, bytes.baseAddress, bytes.count)
        try base.check(Int64(rc), "write")
    }
}
